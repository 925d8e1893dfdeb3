"""HTTP API: dependencies, public schemas, one route module per resource."""
