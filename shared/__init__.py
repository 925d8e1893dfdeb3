"""Protocol and formats shared by the edgefleet agent and controller.

Light on purpose: the device agent imports this package, so it depends only on
the standard library and ``cryptography``.
"""

from shared.errors import ProtocolError, SignatureError, TopicError

PROTOCOL_VERSION = 1

__all__ = ["PROTOCOL_VERSION", "ProtocolError", "SignatureError", "TopicError"]
