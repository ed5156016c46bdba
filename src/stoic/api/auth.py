"""Who may call the admin endpoints.

A bearer token from the settings (``STOIC_ADMIN_TOKEN``), compared in
constant time: no token sent → 401, a wrong one → 403. With no token
configured the admin endpoints are refused, not open — unless the server was
started for the local demo, which allows loopback clients and says so loudly.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass

from fastapi import Request

LOOPBACK_CLIENTS = {"127.0.0.1", "::1"}  #: socket peers that count as this machine
LOOPBACK = LOOPBACK_CLIENTS | {"localhost"}  #: addresses a demo server may listen on
_ACTOR = re.compile(r"^[\w.@:+/ -]{1,200}$")


@dataclass(frozen=True)
class ApiSettings:
    """What the HTTP API allows.

    admin_token:
        The bearer token admin requests must carry; None refuses admin requests.
    protect_reads:
        Put the health and metrics endpoints behind the token too.
    allow_loopback_admin:
        Without a token, accept admin requests from loopback clients (demo only).
    """

    admin_token: str | None = None
    protect_reads: bool = False
    allow_loopback_admin: bool = False

    def __post_init__(self) -> None:
        if self.admin_token is not None and len(self.admin_token) < 16:
            raise ValueError("the admin token must be at least 16 characters")


class AuthError(Exception):
    """A request without the right credentials: ``status`` is 401 or 403."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class Admin:
    """An authenticated admin: ``actor`` goes into the audit log."""

    actor: str


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else ""


def authenticate(request: Request, settings: ApiSettings) -> Admin:
    """Returns the admin behind a request or raises AuthError."""
    token = bearer(request)
    client = request.client.host if request.client else ""
    if settings.admin_token is None:
        if settings.allow_loopback_admin and client in LOOPBACK_CLIENTS:
            return Admin(_actor(request, f"anonymous@{client}"))
        raise AuthError(403, "admin_disabled",
                        "admin endpoints are disabled: no admin token is configured (set STOIC_ADMIN_TOKEN)")
    if token is None:
        raise AuthError(401, "unauthenticated", "this endpoint needs 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(token.encode(), settings.admin_token.encode()):
        raise AuthError(403, "forbidden", "the bearer token is not valid")
    return Admin(_actor(request, "admin"))


def is_admin(request: Request, settings: ApiSettings) -> bool:
    """True when the request carries valid admin credentials (never raises)."""
    try:
        authenticate(request, settings)
    except AuthError:
        return False
    return True


def _actor(request: Request, default: str) -> str:
    """The name the caller gives in ``X-Stoic-Actor`` (e.g. a person), else ``default``."""
    named = request.headers.get("x-stoic-actor", "").strip()
    if not named:
        return default
    if not _ACTOR.match(named):
        raise AuthError(400, "invalid_actor",
                        "X-Stoic-Actor must be 1-200 letters, digits, spaces or . @ : + / - _")
    return named
