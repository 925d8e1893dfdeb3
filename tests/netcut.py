"""A TCP relay whose link can be cut and restored: a device's network outage, the broker staying up."""

from __future__ import annotations

from firmware_sim.netfault import Relay


class CuttableLink(Relay):
    """Relays 127.0.0.1:``port`` to the target; ``cut()`` drops every connection and refuses new ones."""

    def __init__(self, target_host: str, target_port: int) -> None:
        super().__init__(target_host, target_port, name="netcut")

    def cut(self) -> None:
        self.set("partition")
        self.drop_connections()

    def restore(self) -> None:
        self.set("up")
