"""``edgefleet-agent status``: what the running agent says about itself, read from its local API."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from agent.localapi.client import AgentClient


def fetch(socket_path: Path, timeout: float = 5.0) -> dict[str, Any]:
    """The agent's ``status`` answer; raises OSError when no agent answers on the socket."""
    with AgentClient(socket_path, timeout=timeout) as c:
        return c.call({"op": "status"})


def _ago(t: float | None, now: float) -> str:
    if not t:
        return "never"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))
    return f"{stamp} ({max(0, int(now - t))} s ago)"


def render(s: dict[str, Any], now: float | None = None) -> str:
    now = time.time() if now is None else now
    broker, ota, tel = s.get("broker", {}), s.get("ota", {}), s.get("telemetry", {})
    state = "connected" if broker.get("connected") else "disconnected"
    lines = [
        f"device     {s.get('device_id')} (agent {s.get('agent_version')})",
        f"broker     {state} to {broker.get('host')}:{broker.get('port')}; last contact {_ago(broker.get('last_contact'), now)}",
    ]
    target = ota.get("target") or {}
    doing = f" {target.get('model')} v{target.get('version')} ({ota.get('role')})" if target else ""
    reason = f": {ota['reason']}" if ota.get("reason") else ""
    lines.append(f"ota        {ota.get('state', '?')}{doing}{reason}")
    models = s.get("models") or {}
    if not models:
        lines.append("models     none loaded")
    for i, (role, m) in enumerate(sorted(models.items())):
        why = f"; {m['reason']}" if m.get("reason") else ""
        head = "models     " if i == 0 else "           "
        what = f"{m['model']} v{m['version']} ({m['runtime']}, sha256 {m['sha256'][:12]})"
        lines.append(f"{head}{role}: {what} since {_ago(m.get('since'), now)}{why}")
    queue = f"{tel.get('queue_depth', '?')} windows waiting to be sent"
    cadence = tel.get("cadence")
    if cadence == "fresh":
        cadence = f"each window at once (fresh, for {', '.join(tel.get('fresh_for') or [])})"
    elif cadence == "batched":
        cadence = "windows batched"
    how = f"; {cadence}" if cadence else ""
    lines.append(f"telemetry  {queue}; {tel.get('windows', '?')} made since start{how}")
    cap = tel.get("capture")
    if cap:
        lost = f"; {cap['dropped']} REFUSED by the controller and dropped" if cap.get("dropped") else ""
        again = f"; {cap['conflicts']} batches sent again under a fresh spool id" if cap.get("conflicts") else ""
        lines.append(f"capture    {cap.get('pending', '?')} samples waiting, {cap.get('uploaded', '?')} uploaded{again}{lost}")
    batch = s.get("batch_features") or {}
    if batch.get("values"):
        in_force = ", ".join(f"{k}={v:g}" for k, v in sorted(batch.get("in_force", {}).items())) or "none in force"
        lines.append(f"features   {in_force} ({batch['values']} values on hand)")
    return "\n".join(lines)


def main(socket_path: Path, as_json: bool) -> int:
    try:
        s = fetch(socket_path)
    except FileNotFoundError:
        print(
            f"edgefleet-agent: no agent socket at {socket_path}: is the agent running? (systemctl status edgefleet-agent)",
            file=sys.stderr,
        )
        return 1
    except PermissionError:
        print(
            f"edgefleet-agent: permission denied on {socket_path}: run as the agent's user or a member of its group",
            file=sys.stderr,
        )
        return 1
    except (OSError, ValueError) as exc:
        print(f"edgefleet-agent: the agent at {socket_path} did not answer: {exc}", file=sys.stderr)
        return 1
    if not s.get("ok"):
        print(f"edgefleet-agent: the agent refused: {s.get('error')} (an agent older than this command?)", file=sys.stderr)
        return 1
    s.pop("ok", None)
    print(json.dumps(s, indent=2) if as_json else render(s))
    return 0
