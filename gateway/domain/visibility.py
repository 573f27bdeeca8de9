"""Who may see what: hidden messages and hidden copies are decided here, once."""

from __future__ import annotations

from gateway.domain.lifecycle import Role

# SPEC §1.4: a hidden (RHC) message is seen only by the assignee side and RHC members.
_HIDDEN_AUDIENCE = frozenset({Role.ASSIGNEE, Role.OWNER, Role.HIGHER_AUTHORITY, Role.RHC})


def sees_hidden(roles: frozenset[Role]) -> bool:
    """True when a person with ``roles`` may see hidden messages and the RHC list."""
    return bool(roles & _HIDDEN_AUDIENCE)
