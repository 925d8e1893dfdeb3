import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

FORBIDDEN = ("fastapi", "sqlmodel", "sqlalchemy", "tensorflow", "controller")


def test_import_agent_loads_no_controller_side_module():
    code = (
        "import sys, agent, agent.daemon, agent.cli, agent.ota.updater, agent.ota.build, agent.ota.state, agent.ota.trust\n"
        "import agent.localapi.http, agent.localapi.client, agent.http, agent.ota.testhook, shared.csr\n"
        "import agent.runtime.onnx_rt, agent.runtime.litert, shared.messages, shared.bundle\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
