"""amqtt plugins: password authentication and the per-robot topic ACL.

Written here rather than configuring amqtt's own because amqtt 0.12's
``AnonymousAuthPlugin(allow_anonymous=False)`` admits any client that merely sends a user name,
and its ACL plugin cannot express "a robot writes only under its own id".
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amqtt.contexts import Action, BaseContext
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from broker.credentials import ADMIN_USERS, read_password_file, verify_password
from common.errors import ArsError
from common.router import topic_matches
from common.topics import ROBOT_PUBLISHES, Topics

logger = logging.getLogger(__name__)


class ArsAuthPlugin(BaseAuthPlugin):
    """Password check against a file of scrypt hashes; anonymous only when configured on.

    With ``checked_on_connect`` (the embedded broker: ``broker.admission`` has verified this
    CONNECT's password before amqtt read it) the scrypt hash is not computed a second time;
    unknown users and anonymous clients are still refused here.
    """

    @dataclass
    class Config:
        password_file: str | None = None
        allow_anonymous: bool = False
        checked_on_connect: bool = False

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        cfg: ArsAuthPlugin.Config = self.context.config  # type: ignore[assignment]
        self._allow_anonymous = bool(cfg.allow_anonymous)
        self._checked_on_connect = bool(cfg.checked_on_connect)
        self._users: dict[str, str] = (
            read_password_file(Path(cfg.password_file)) if cfg.password_file else {}
        )

    async def authenticate(self, *, session: Session) -> bool | None:
        username = session.username
        if not username:
            return self._allow_anonymous
        encoded = self._users.get(username)
        if encoded is None:
            logger.warning("mqtt auth refused: unknown user %r", username)
            return False
        if self._checked_on_connect:
            return True
        ok = await asyncio.to_thread(verify_password, session.password or "", encoded)
        if not ok:
            logger.warning("mqtt auth refused: bad password for %r", username)
        return ok


class ArsTopicPlugin(BaseTopicPlugin):
    """Per-user topic rules: admins anywhere under the prefix, robots only their own topics."""

    @dataclass
    class Config:
        prefix: str = "ars"
        anonymous_admin: bool = False
        extra: dict[str, Any] = field(default_factory=dict)

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        cfg: ArsTopicPlugin.Config = self.context.config  # type: ignore[assignment]
        self._topics = Topics(cfg.prefix)
        self._anonymous_admin = cfg.anonymous_admin

    def allowed(self, username: str | None, topic: str, action: Action) -> bool:
        topics = self._topics
        if username is None or username == "":
            admin = self._anonymous_admin
        else:
            admin = username in ADMIN_USERS
        if admin:
            return topic_matches(topic, topics.everything) or topic == topics.prefix
        if not username or not username.startswith("robot-"):
            return False
        rid = username[len("robot-") :]
        try:
            own = topics.robot_root(rid)
        except ArsError:  # a user name that is no robot id owns no topic
            return False
        if action == Action.PUBLISH:
            return any(topic == topics.robot(rid, leaf) for leaf in ROBOT_PUBLISHES)
        # subscribe / receive: its own subtree only (commands, model offers and chunks, acks)
        if "#" in topic or "+" in topic:
            return topic.startswith(own) and "+" not in topic[len(own) - 1 :].split("/")[0]
        return topic.startswith(own)

    async def topic_filtering(
        self,
        *,
        session: Session | None = None,
        topic: str | None = None,
        action: Action | None = None,
    ) -> bool | None:
        if topic is None or action is None:
            return False
        username = session.username if session else None
        ok = self.allowed(username, topic, action)
        if not ok and action != Action.RECEIVE:
            logger.warning("mqtt acl refused: user=%r action=%s topic=%s", username, action, topic)
        return ok
