"""Telemetry: receive device messages over MQTT, decode, validate, dedupe, aggregate."""
