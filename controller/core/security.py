"""API tokens: generated here, stored only as sha256, compared in constant time.

Tokens are 32 random bytes, so a plain sha256 is enough (no password
stretching needed) and lets a request find its token by hash in one lookup.
Neither a token nor its hash is ever logged.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from controller.core.roles import Role

TOKEN_PREFIX = "eft_"  # noqa: S105 - a prefix, not a secret
BOOTSTRAP_PRINCIPAL = "admin"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a name (the audit log's actor) and a role."""

    name: str
    role: Role
    token_id: int | None = None  # None for the bootstrap admin token

    def __repr__(self) -> str:
        return f"Principal({self.name!r}, {self.role.value})"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def same_secret(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass"))
