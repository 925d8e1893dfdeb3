"""Identity: the device CA and enrolment, the broker's configuration and authorisation."""
