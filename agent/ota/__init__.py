"""Over-the-air model updates: the pure state machine, the image-repository client, test hooks."""
