"""Property-based fuzzing of the whole HTTP API from its OpenAPI spec (schemathesis): no 500s,
and every documented response matches its schema.

In-process (ASGI) against a real SQLite database and a real broker, with an
admin token so requests get past authentication, and a seeded registry,
devices and a cohort so some generated requests reach the handlers' logic.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.controller_app import ADMIN_TOKEN, running_api, settings_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory, mosquitto, make_bundle):
    tmp = tmp_path_factory.mktemp("fuzz")
    with running_api(settings_for(tmp, f"sqlite:///{tmp}/fuzz.db", mosquitto.port)) as api:
        assert api.admin.post("/v1/models", content=make_bundle(1)).status_code == 201
        api.admin.post("/v1/devices", json={"id": "pi-1", "region": "eu", "tags": ["a"]})
        api.admin.post("/v1/cohorts", json={"name": "eu", "filter": {"region": ["eu"]}})
        viewer = api.admin.post("/v1/tokens", json={"principal": "fuzzy", "role": "viewer"}).json()["token"]
        yield schemathesis.openapi.from_asgi("/openapi.json", api.app), {"Authorization": f"Bearer {viewer}"}


def test_no_server_errors_on_any_operation(api_schema):
    """As admin and as a viewer (who gets 403 on writes), never a 500 and never an undocumented shape."""
    schema, viewer_auth = api_schema
    failures = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 25
    for op in operations:

        @settings(max_examples=25, suppress_health_check=list(HealthCheck), deadline=None, database=None)
        @given(case=op.as_strategy(), as_viewer=st.booleans())
        def check(case, as_viewer):
            headers = viewer_auth if as_viewer else AUTH
            case.call_and_validate(headers=headers, checks=[not_a_server_error, response_schema_conformance])

        try:
            check()
        except Exception as exc:
            failures.append(f"{op.label}: {exc}")
    assert not failures, "\n\n".join(failures)
