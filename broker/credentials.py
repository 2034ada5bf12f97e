"""Broker users: a password file of scrypt hashes (never plain text) and generated credentials.

Roles come from the user name: ``server`` and ``operator`` may act on every robot;
``robot-<rid>`` may write only under its own ``ars/robots/<rid>/``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from common.credentials import secrets_file as local_secrets_file
from common.errors import ConfigError
from common.files import write_atomic

_N, _R, _P = 2**14, 8, 1
ADMIN_USERS = ("server", "operator")


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """``scrypt$N$r$p$salt$hash`` (base64), a memory-hard hash from the standard library."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${_N}${_R}${_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    """Constant-time check of ``password`` against an encoded hash; False for malformed hashes."""
    try:
        scheme, n, r, p, salt_b64, hash_b64 = encoded.split("$")
        if scheme != "scrypt":
            return False
        salt, expected = base64.b64decode(salt_b64), base64.b64decode(hash_b64)
        got = hashlib.scrypt(
            password.encode(), salt=salt, n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def read_password_file(path: Path) -> dict[str, str]:
    """``user:hash`` lines into a dict; ConfigError naming the line when malformed."""
    users: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"broker password file {path} not found") from exc
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, encoded = line.partition(":")
        if not sep or not user or not encoded.startswith("scrypt$"):
            raise ConfigError(f"{path}:{number}: expected 'user:scrypt$...'")
        users[user] = encoded
    return users


def write_private(path: Path, text: str) -> None:
    """Write a secret file atomically with mode 0600 (``common.files.write_atomic``)."""
    write_atomic(path, text.encode("utf-8"), mode=0o600)


@dataclass(frozen=True)
class Credentials:
    """Plain passwords for local agents (0600 file) plus the hashed password file for the broker."""

    passwords: dict[str, str]
    password_file: Path
    secrets_file: Path

    def url_for(self, user: str, host: str, port: int) -> str:
        return f"mqtt://{user}:{self.passwords[user]}@{host}:{port}"


def ensure_credentials(
    data_dir: Path, robot_ids: list[str] | tuple[str, ...] = ("rover1",)
) -> Credentials:
    """Generate on first run (and add missing robots later); never regenerate existing ones."""
    secrets_file = local_secrets_file(data_dir)
    password_file = data_dir / "broker" / "passwd"
    passwords: dict[str, str] = {}
    if secrets_file.exists():
        passwords = json.loads(secrets_file.read_text(encoding="utf-8"))
    wanted = [*ADMIN_USERS, *(f"robot-{rid}" for rid in robot_ids)]
    changed = False
    for user in wanted:
        if user not in passwords:
            passwords[user] = secrets.token_urlsafe(18)
            changed = True
    if changed or not password_file.exists():
        write_private(secrets_file, json.dumps(passwords, indent=2))
        lines = [f"{user}:{hash_password(pw)}" for user, pw in sorted(passwords.items())]
        write_private(password_file, "\n".join(lines) + "\n")
    return Credentials(passwords=passwords, password_file=password_file, secrets_file=secrets_file)
