"""Roles, ordered: each role may do everything the roles below it may.

metrics   scrape ``/metrics`` and nothing else (a Prometheus credential; ADR 0069)
viewer    read anything except tokens
operator  enrol devices, edit cohorts, upload bundles, assign versions up to canary
approver  approve a version for use beyond canary (not one they registered), revoke
admin     manage API tokens
"""

from __future__ import annotations

from enum import Enum


class Role(str, Enum):
    METRICS = "metrics"
    VIEWER = "viewer"
    OPERATOR = "operator"
    APPROVER = "approver"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


_RANK = {Role.METRICS: -1, Role.VIEWER: 0, Role.OPERATOR: 1, Role.APPROVER: 2, Role.ADMIN: 3}
