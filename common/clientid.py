"""MQTT client ids owned by a broker user: ``<user>:<name>``, so no user can take another's.

A broker drops the older of two connections with the same client id (MQTT 3.1.1 section 3.1.4).
When any user may pick any id, one user's connection can push another's off the broker. Both our
brokers therefore accept a client id only from the user it names: the embedded one in
``broker.admission``, Mosquitto through the plugin ``broker/mosquitto_clientid.c``. ``:`` cannot
occur in a user name (both brokers' password files are ``user:hash`` lines), so the owner of an
id is never ambiguous. Clients without a user name (``broker.allow_anonymous``) use
``anonymous:<name>``.
"""

from __future__ import annotations

SEPARATOR = ":"
ANONYMOUS = "anonymous"


def owner_prefix(username: str | None) -> str:
    """What every client id of ``username`` starts with."""
    return f"{username or ANONYMOUS}{SEPARATOR}"


def owned_client_id(username: str | None, name: str) -> str:
    """The wire client id for ``name`` connecting as ``username`` (unchanged if already owned)."""
    prefix = owner_prefix(username)
    return name if name.startswith(prefix) else prefix + name


def owns_client_id(username: str | None, client_id: str) -> bool:
    """True when ``client_id`` belongs to ``username``: ``<user>:`` and a non-empty name."""
    prefix = owner_prefix(username)
    return client_id.startswith(prefix) and len(client_id) > len(prefix)
