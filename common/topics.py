"""Topic names: built here and nowhere else, so the protocol doc and the code stay in step."""

from __future__ import annotations

from dataclasses import dataclass

from common.ids import check_id

ROBOT_LEAVES = (
    "state",
    "cmd",
    "events",
    "preview",
    "regions",
    "regions/ack",
    "model/offer",
    "model/chunk",
    "model/status",
)


@dataclass(frozen=True)
class Topics:
    """Topic builders under one configurable prefix (default ``ars``)."""

    prefix: str = "ars"

    # --- robot topics -------------------------------------------------------------------
    def robot(self, rid: str, leaf: str) -> str:
        return f"{self.prefix}/robots/{check_id(rid, 'robot id')}/{leaf}"

    def robot_state(self, rid: str) -> str:
        return self.robot(rid, "state")

    def robot_cmd(self, rid: str) -> str:
        return self.robot(rid, "cmd")

    def robot_events(self, rid: str) -> str:
        return self.robot(rid, "events")

    def robot_preview(self, rid: str) -> str:
        return self.robot(rid, "preview")

    def robot_regions(self, rid: str) -> str:
        return self.robot(rid, "regions")

    def robot_regions_ack(self, rid: str) -> str:
        return self.robot(rid, "regions/ack")

    def model_offer(self, rid: str) -> str:
        return self.robot(rid, "model/offer")

    def model_chunk(self, rid: str) -> str:
        return self.robot(rid, "model/chunk")

    def model_status(self, rid: str) -> str:
        return self.robot(rid, "model/status")

    def robot_heartbeat(self, rid: str) -> str:
        """The robot's link heartbeat (``common.mqtt.MqttLink``): it publishes and reads it."""
        return self.robot(rid, "heartbeat")

    def all_robots(self, leaf: str) -> str:
        """Wildcard subscription for one leaf of every robot."""
        return f"{self.prefix}/robots/+/{leaf}"

    # --- server topics ------------------------------------------------------------------
    @property
    def server_state(self) -> str:
        return f"{self.prefix}/server/state"

    @property
    def server_cmd(self) -> str:
        return f"{self.prefix}/server/cmd"

    @property
    def server_events(self) -> str:
        return f"{self.prefix}/server/events"

    @property
    def server_progress(self) -> str:
        return f"{self.prefix}/server/progress"

    @property
    def server_annotation(self) -> str:
        """Annotation traffic (region list, crops, submitted masks) between web and server."""
        return f"{self.prefix}/server/annotation"

    def server_reply(self, client_id: str) -> str:
        """Reply topic for request/response calls from one client (web, CLI)."""
        return f"{self.prefix}/server/reply/{check_id(client_id, 'client id')}"

    def heartbeat(self, client_id: str) -> str:
        """Link heartbeat of a server or operator client (server agent, web UI)."""
        return f"{self.prefix}/heartbeat/{check_id(client_id, 'client id')}"

    # --- parsing ------------------------------------------------------------------------
    def parse_robot_topic(self, topic: str) -> tuple[str, str] | None:
        """Split ``prefix/robots/{rid}/{leaf}`` into (rid, leaf); None for other topics."""
        head = f"{self.prefix}/robots/"
        if not topic.startswith(head):
            return None
        rest = topic[len(head) :]
        rid, _, leaf = rest.partition("/")
        if not leaf or leaf not in ROBOT_LEAVES:
            return None
        try:
            check_id(rid, "robot id")
        except Exception:
            return None
        return rid, leaf
