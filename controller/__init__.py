"""edgefleet controller: the cloud service fleet operators talk to."""

__version__ = "0.1.0"
