"""Simulated edgefleet devices and the models they run, for tests, demos and benchmarks."""
