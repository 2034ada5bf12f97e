"""Admission of a CONNECT before amqtt sees it: credentials first, then the client id's owner.

amqtt 0.12.1 handles a clean-session CONNECT by deleting the old session of that client id (its
subscriptions included) and only then checks the password, and it lets any authenticated user
take over any client id. One CONNECT with a wrong password and the client id of the server left
the server connected but deaf. ``GuardedReader`` therefore asks ``Admission`` about the first
packet and answers a refusal with its CONNACK itself: amqtt never sees that CONNECT, so no
session is touched. Inside amqtt, ``ArsAuthPlugin`` still refuses unknown users and anonymous
clients but does not hash the password a second time (``checked_on_connect``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from broker.credentials import read_password_file, verify_password
from broker.framing import (
    CONNACK_BAD_CREDENTIALS,
    CONNACK_ID_REJECTED,
    CONNACK_NOT_AUTHORISED,
    ConnectInfo,
)
from common.clientid import owner_prefix, owns_client_id

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Refusal:
    """The CONNACK to answer with and why (for the log)."""

    connack: bytes
    reason: str


class Admission:
    """Decides whether a parsed 3.1.1 CONNECT may reach amqtt."""

    def __init__(self, users: dict[str, str], *, allow_anonymous: bool) -> None:
        self._users = users
        self._allow_anonymous = allow_anonymous

    @classmethod
    def from_file(cls, password_file: Path | None, *, allow_anonymous: bool) -> Admission:
        users = read_password_file(password_file) if password_file is not None else {}
        return cls(users, allow_anonymous=allow_anonymous)

    async def refusal(self, info: ConnectInfo) -> Refusal | None:
        """None when admitted; otherwise the CONNACK (0x05, 0x04 or 0x02) and the reason."""
        user = info.username
        if not user:
            if not self._allow_anonymous:
                return Refusal(CONNACK_NOT_AUTHORISED, "no user name (anonymous access is off)")
        else:
            encoded = self._users.get(user)
            password = (info.password or b"").decode("utf-8", "replace")
            # Unknown users cost a hash too, so timing does not tell which users exist.
            ok = await asyncio.to_thread(verify_password, password, encoded or _DUMMY_HASH)
            if encoded is None or not ok:
                return Refusal(CONNACK_BAD_CREDENTIALS, f"bad user name or password for {user!r}")
        if not owns_client_id(user, info.client_id):
            return Refusal(
                CONNACK_ID_REJECTED,
                f"client id {info.client_id!r} does not belong to user {user!r} "
                f"(use {owner_prefix(user)}<name>)",
            )
        return None


#: A valid scrypt hash of a random password, checked for unknown users.
_DUMMY_HASH = (
    "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$ibPmAnCrOvMa7X6bUWuvs6HsIq9h9gZS3Z1vVmEb0Lw="
)
