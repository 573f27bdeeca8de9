"""Addresses of a mail (To, Cc, envelope) → the ticket's target, visible copies and hidden copies."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass


class PartyKind(enum.StrEnum):
    EMPLOYEE = "employee"
    DEPARTMENT = "department"


@dataclass(frozen=True)
class Party:
    """An employee or a department of one organization, as a routing participant."""

    kind: PartyKind
    id: int
    org_id: int


@dataclass(frozen=True)
class Routing:
    target: Party | None
    rc: tuple[Party, ...]
    rhc: tuple[Party, ...]


def _unique(parties: Sequence[Party]) -> list[Party]:
    seen: set[Party] = set()
    out: list[Party] = []
    for p in parties:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def route(
    *,
    to: Sequence[Party],
    cc: Sequence[Party],
    envelope_only: Sequence[Party],
    default: Party | None,
    sender: Party | None = None,
) -> Routing:
    """SPEC §2.2: first department in To; else first employee in To; else first department in
    Cc or among the envelope recipients; else the default department. Every other party in
    To/Cc is an RC; envelope recipients absent from To/Cc were Bcc'd and become RHC."""
    depts_to = [p for p in to if p.kind is PartyKind.DEPARTMENT]
    emps_to = [p for p in to if p.kind is PartyKind.EMPLOYEE and p != sender]
    later = [p for p in [*cc, *envelope_only] if p.kind is PartyKind.DEPARTMENT]
    target: Party | None
    if depts_to:
        target = depts_to[0]
    elif emps_to:
        target = emps_to[0]
    elif later:
        target = later[0]
    else:
        target = default
    visible = set(to) | set(cc)
    skip = {target, sender}
    rc = [p for p in _unique([*to, *cc]) if p not in skip]
    rhc = [p for p in _unique(list(envelope_only)) if p not in skip and p not in visible]
    return Routing(target=target, rc=tuple(rc), rhc=tuple(rhc))
