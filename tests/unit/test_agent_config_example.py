"""docs/examples/agent.toml parses, and names (set or commented out) every key the agent reads."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import msgspec
import pytest

from agent.config import (
    AgentConfig,
    BrokerConfig,
    CaptureConfig,
    DownloadConfig,
    HealthConfig,
    IdentityConfig,
    ImageRepoConfig,
    TelemetryConfig,
    parse_config,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

pytestmark = pytest.mark.unit
EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "agent.toml"
TABLES = {
    "broker": BrokerConfig,
    "telemetry": TelemetryConfig,
    "capture": CaptureConfig,
    "identity": IdentityConfig,
    "image_repository": ImageRepoConfig,
    "download": DownloadConfig,
    "health": HealthConfig,
}


def _keys_by_table(text: str) -> dict[str, set[str]]:
    """Keys per table, counting commented-out ``# key = value`` lines too."""
    out: dict[str, set[str]] = {"": set()}
    table = ""
    for line in text.splitlines():
        if m := re.match(r"^\[(\w+)\]", line):
            table = m.group(1)
            out.setdefault(table, set())
        elif m := re.match(r"^#?\s?(\w+) = ", line):
            out[table].add(m.group(1))
    return out


def test_every_key_is_in_the_example():
    keys = _keys_by_table(EXAMPLE.read_text())
    nested = set(TABLES)
    top = {f.encode_name for f in msgspec.structs.fields(AgentConfig)} - nested
    assert top <= keys[""], top - keys[""]
    for table, cls in TABLES.items():
        fields = {f.encode_name for f in msgspec.structs.fields(cls)}
        assert fields <= keys.get(table, set()), (table, fields - keys.get(table, set()))


def test_the_example_is_a_valid_config(tmp_path):
    data = tomllib.loads(EXAMPLE.read_text())
    root = tmp_path / "root.json"
    root.write_text(json.dumps({"signed": {"_type": "root"}}))
    data["image_repository"]["root"] = str(root)  # the real one is pinned at provisioning
    cfg = parse_config(data, str(EXAMPLE))
    assert cfg.device_id == "pi-0001" and cfg.broker.port == 8883 and cfg.log_format == "text"
    assert cfg.identity is not None and cfg.image_repo is not None and not cfg.capture.enabled
