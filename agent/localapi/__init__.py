"""The local API for applications on the device: a Unix socket (``server``), loopback HTTP (``http``), a client."""
