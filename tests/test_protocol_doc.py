"""docs/protocol.md is a contract: its topic table and message fields are checked against the
code (``common.topics.Topics``, ``common.schemas``), so neither drifts from the other."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pydantic
import pytest

from common import schemas
from common.topics import ROBOT_PUBLISHES, Topics

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
#: Fields every message or envelope header carries, described once under "Rules".
COMMON_FIELDS = {"v", "type"}


def _section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def _topic_rows() -> dict[str, str]:
    """Topic (with ``{rid}``, ``{client}``) -> who publishes, from the table under Topics."""
    rows = {}
    for line in _section(DOC.read_text(encoding="utf-8"), "Topics").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells[4]
    return rows


def _built_topics(t: Topics) -> set[str]:
    """Every concrete topic a ``Topics`` builder makes, with placeholder ids."""
    args = {"rid": "{rid}", "client_id": "{client}"}
    out = set()
    for name, member in inspect.getmembers(Topics):
        if name.startswith("_") or name in ("prefix", "everything", "server_reply_root"):
            continue
        if isinstance(member, property):
            out.add(getattr(t, name))
        elif callable(member) and name not in ("robot", "robot_root", "robot_all", "all_robots"):
            params = [p for p in inspect.signature(member).parameters if p != "self"]
            if params and all(p in args for p in params):
                out.add(member(t, *(args[p] for p in params)))
    return out


def test_the_topic_table_is_what_topics_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    import common.topics

    # the doc writes ids as {rid} and {client}; let the builders take those placeholders
    monkeypatch.setattr(common.topics, "check_id", lambda value, what="id": value)
    rows = _topic_rows()
    assert set(rows) == _built_topics(Topics("ars"))
    robot_published = {
        topic.removeprefix("ars/robots/{rid}/")
        for topic, who in rows.items()
        if topic.startswith("ars/robots/") and who == "robot"
    }
    assert robot_published == set(ROBOT_PUBLISHES)  # the broker ACL lets a robot publish these


def _strip_groups(text: str, pairs: str) -> str:
    """Drop every bracketed group (nested too) of the given open/close pairs."""
    opens, closes = pairs[0::2], pairs[1::2]
    out, depth = [], 0
    for ch in text:
        if ch in opens:
            depth += 1
        elif ch in closes and depth:
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out)


def _names(field_list: str) -> set[str]:
    """``a, b {x, y}, c: [w, h] in pixels`` -> {a, b, c}."""
    names = set()
    for piece in _strip_groups(field_list, "{}[]").split(","):
        m = re.match(r"\s*([a-z_][a-z0-9_]*)", piece)
        if m:
            names.add(m.group(1))
    return names


def _documented_fields() -> dict[str, set[str]]:
    """Schema name -> the fields the doc names for it (all mentions together)."""
    text = DOC.read_text(encoding="utf-8")
    found: dict[str, set[str]] = {}
    # "`Name {a, b, ...}`", possibly over several lines
    for m in re.finditer(r"`([A-Z][A-Za-z]+)\s*\{", text):
        depth, i = 1, m.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        found.setdefault(m.group(1), set()).update(_names(text[m.end() : i - 1]))
    # "- `Name`: `a` (...), `b`, ..." or "- `Name`: `a, b {x}, c`": its first sentence
    for m in re.finditer(r"^- `([A-Z][A-Za-z]+)`: (.*?)(?=\n- |\n\n)", text, re.M | re.S):
        sentence = _strip_groups(m.group(2), "()").split(". ")[0]
        names = found.setdefault(m.group(1), set())
        for chunk in re.findall(r"`([^`]*)`", sentence):
            names.update(_names(chunk) if "," in chunk else _names(chunk) & {chunk})
    return found


def test_documented_message_fields_match_the_schemas() -> None:
    models = {
        name: cls
        for name, cls in inspect.getmembers(schemas, inspect.isclass)
        if issubclass(cls, pydantic.BaseModel) and cls.__module__ == schemas.__name__
    }
    documented = {n: f for n, f in _documented_fields().items() if n in models}
    assert {"Command", "Event", "RobotState", "RegionHeader", "ModelOffer"} <= set(documented)
    for name, fields in documented.items():
        schema = set(models[name].model_fields) - COMMON_FIELDS
        assert fields <= schema, f"{name}: documented but not in the schema: {fields - schema}"
        assert schema <= fields, f"{name}: in the schema but not documented: {schema - fields}"
