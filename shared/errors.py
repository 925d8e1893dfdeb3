"""Exceptions raised by the protocol package.

::

    ProtocolError          a message, topic or bundle does not follow the protocol
    ├── TopicError         malformed or unknown MQTT topic
    ├── SchemaError        payload fails validation (types, fields, version, size)
    ├── BundleError        bundle archive or manifest is malformed
    └── SignatureError     signature missing, from an unknown key, or invalid
"""

from __future__ import annotations


class ProtocolError(ValueError):
    """Something received does not follow the edgefleet protocol."""


class TopicError(ProtocolError):
    """Malformed or unknown MQTT topic."""


class SchemaError(ProtocolError):
    """A payload failed validation."""


class BundleError(ProtocolError):
    """A model bundle or its manifest is malformed."""


class SignatureError(ProtocolError):
    """A signature is missing, made by an unknown key, or invalid."""
