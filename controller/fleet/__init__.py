"""Fleet: devices, cohorts, assignments and the director's signed desired state."""
