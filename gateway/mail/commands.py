"""Split the "#command" lines at the top of a mail body (SPEC §2.4) from the message."""

from __future__ import annotations

import re
from dataclasses import dataclass

ACTIONS = frozenset(
    {
        "take", "reply", "return", "respond", "release", "hold", "pending",
        "to_higher_authority", "approve", "reject", "escalate", "deliver", "close", "cancel",
        "reopen", "assign", "cc", "bcc", "category", "priority",
    }
)  # fmt: skip

# "#status X": the status a person names, and the action that leads to it.
STATUS_ACTIONS = {
    "delivered": "deliver",
    "closed": "close",
    "cancelled": "cancel",
    "canceled": "cancel",
    "on_hold": "hold",
    "pending": "pending",
    "working_on_it": "take",
    "released": "release",
    "rejected": "reject",
    "returned": "return",
    "reopened": "reopen",
    "approved": "approve",
    "escalated": "escalate",
    "to_higher_authority": "to_higher_authority",
}

# Actions whose words after the command are a free-text remark, not arguments.
_REMARK_ACTIONS = frozenset({"return", "hold", "pending", "reject", "release", "cancel"})

_COMMAND_LINE = re.compile(r"^\s*#([A-Za-z][\w-]*)(?:[ \t:]+(.*))?$")


@dataclass(frozen=True)
class BodyCommand:
    """One command line; `action` is "unknown" for a "#word" we do not know."""

    action: str
    args: tuple[str, ...]
    remark: str
    raw: str


def _normalise(word: str) -> str:
    return word.strip().lower().replace("-", "_").replace(" ", "_")


def parse_command(line: str) -> BodyCommand | None:
    """Read one "#command …" line; None when the line is not shaped like a command."""
    match = _COMMAND_LINE.match(line)
    if not match:
        return None
    word = _normalise(match.group(1))
    rest = (match.group(2) or "").strip()
    raw = line.strip()
    if word == "status":
        return _status_command(rest, raw)
    if word in ("to_higher_authority", "tohigherauthority", "higher_authority"):
        word = "to_higher_authority"
    if word not in ACTIONS:
        return BodyCommand(action="unknown", args=(word,), remark=rest, raw=raw)
    args = tuple(a for a in re.split(r"[\s,;]+", rest) if a)
    if word in _REMARK_ACTIONS:
        args = ()
    return BodyCommand(action=word, args=args, remark=rest, raw=raw)


def _status_command(rest: str, raw: str) -> BodyCommand:
    """For "#status on hold waiting for parts" the longest known status name wins."""
    words = rest.split()
    for n in (3, 2, 1):
        if len(words) >= n:
            action = STATUS_ACTIONS.get(_normalise("_".join(words[:n])))
            if action:
                return BodyCommand(action=action, args=(), remark=" ".join(words[n:]), raw=raw)
    return BodyCommand(action="unknown", args=("status", *words[:1]), remark=rest, raw=raw)


def split_commands(text: str) -> tuple[tuple[BodyCommand, ...], str]:
    """Commands from the top of the body, and the message that follows them.

    Blank lines before and between commands are allowed. The first line that is not a
    command ends the command block, so a "#hashtag" in the prose below is just text; an
    unknown "#word" inside the block is returned as action "unknown" for the caller to
    refuse (and confirm to the sender), rather than silently becoming part of the message.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    commands: list[BodyCommand] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        command = parse_command(line)
        if command is None:
            break
        commands.append(command)
        i += 1
    rest = "\n".join(lines[i:]) if commands else text
    return tuple(commands), rest
