"""Over-the-air model updates: the pure state machine (``state``), the updater that drives it, the download
seam (``fetcher``), the slots on disk (``store``) and the image-repository client (``trust``)."""
