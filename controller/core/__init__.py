"""Core: settings, database, tables, roles, security, audit log and metrics; every concern may use it."""
