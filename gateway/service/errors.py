"""The two error tiers: what goes back to the person, and what is ours."""

from __future__ import annotations


class UserFacingError(Exception):
    """The person's mistake or a refused action: said back on their channel (CLI exit 1)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotFound(UserFacingError):
    """A ticket, employee or address that does not exist (or is not visible to the actor)."""


class ActionRefused(UserFacingError):
    """The lifecycle table does not allow the action for this actor and status."""


class OrgFileError(UserFacingError):
    """An organization file that cannot be imported; names the key or line at fault."""


class StorageUnavailable(Exception):
    """The database cannot be reached or written now: the channel says "try later" (SMTP 451)."""


class AlreadyApplied(Exception):
    """A request whose idempotency key (a Slack event or interaction id) was applied before:
    nothing was changed this time."""
