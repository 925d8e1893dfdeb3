"""paho-mqtt's client module as the agent imports it: without ``urllib.request`` resident.

paho imports ``urllib.request`` at its top for proxy settings it reads only with PySocks
installed; :mod:`agent.deferred` leaves a placeholder that loads the real module on first use
(~1.2 MB resident otherwise). The agent's modules take paho's client from here.
"""

from __future__ import annotations

from agent.deferred import defer

defer("urllib.request")

import paho.mqtt.client as mqtt  # noqa: E402  (after the placeholder is in place)

__all__ = ["mqtt"]
