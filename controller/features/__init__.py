"""Batch features: values per device, cohort or fleet with validity times, delivered in the signed desired state."""
