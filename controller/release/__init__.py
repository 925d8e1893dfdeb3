"""Release: the model registry and approvals, the TUF image repository, bundle storage."""
