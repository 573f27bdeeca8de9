"""SLA clocks (SPEC §4): which policy applies to a ticket, its deadlines in the target branch's
business hours, pauses and re-routes; and the other deadlines a status change sets (reminder,
auto-close, feedback request). The scheduler (service/scheduler.py) acts on these columns.

Every deadline is a column of the ticket; a status change sets or clears them here, in the
change's transaction, so a restart loses nothing and a tick finds due work by index alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from gateway.domain import business_time as bt
from gateway.domain.lifecycle import TERMINAL, Action, Status
from store import models as m
from store import schedule_queries as sq

if TYPE_CHECKING:
    from gateway.service.tickets import Unit

# SPEC §4: the clocks stop while the ticket waits for the requester or a third party.
PAUSED: frozenset[Status] = frozenset({Status.RETURNED, Status.ON_HOLD, Status.PENDING})
# The first response is met by taking the ticket or answering the requester (a reply, or a
# return asking for information: both are an answer the requester gets).
FIRST_RESPONSE: frozenset[Action] = frozenset({Action.TAKE, Action.REPLY, Action.RETURN})
# Reminders go to the requester while the ticket waits for their answer.
AWAITING_REQUESTER: frozenset[Status] = frozenset({Status.RETURNED, Status.REPLIED})
# The years of public holidays a calendar holds around the instant it is built for.
_YEARS_BEFORE, _YEARS_AFTER = 1, 3


@dataclass(frozen=True)
class ScheduleOptions:
    """The scheduler's knobs (config `[scheduler]`)."""

    confirm_window: timedelta = timedelta(hours=72)
    reminder_after: timedelta = timedelta(hours=48)  # business hours of the requester's branch
    reminder_max: int = 2
    feedback_delay: timedelta = timedelta(hours=1)
    feedback_reminder_after: timedelta = timedelta(hours=72)
    batch: int = 200


def check_holiday_country(country: str, subdivision: str | None) -> str | None:
    """Why the `holidays` package cannot give a branch's public holidays (None when it can)."""
    import holidays

    try:
        holidays.country_holidays(country, subdiv=subdivision, years=2026)
    except NotImplementedError:
        return f"the holidays package knows no country {country!r}"
    except (KeyError, ValueError) as err:
        return f"{country!r} has no subdivision {subdivision!r} ({err})"
    return None


class Calendars:
    """Branch rows → business-time calendars, each built once per process and year span (the
    `holidays` package's dates are computed once, not per ticket)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[Any, ...], bt.Calendar] = {}

    def of(self, branch: m.Branch, around: datetime) -> bt.Calendar:
        year = around.astimezone(UTC).year
        key = (
            branch.id,
            branch.timezone,
            tuple(sorted((branch.working_hours or {}).items())),
            tuple(branch.holidays or ()),
            branch.holiday_country,
            branch.holiday_subdivision,
            year,
        )
        cal = self._cache.get(key)
        if cal is None:
            days = {date.fromisoformat(str(h)) for h in branch.holidays or ()}
            if branch.holiday_country:
                import holidays

                public = holidays.country_holidays(
                    branch.holiday_country,
                    subdiv=branch.holiday_subdivision,
                    years=range(year - _YEARS_BEFORE, year + _YEARS_AFTER + 1),
                )
                days |= set(public.keys())
            cal = bt.Calendar.build(branch.timezone, branch.working_hours or {}, days)
            if len(self._cache) > 1000:
                self._cache.clear()
            self._cache[key] = cal
        return cal


def choose_policy(
    policies: list[dict[str, Any]], *, category: str | None, sub_category: str | None, priority: str
) -> dict[str, Any] | None:
    """The first of a department's policies that fits the ticket (file order): one naming no
    categories fits every category, one naming no priorities every priority; a category entry
    is `Top` (with all its sub-categories) or `Top/Sub`."""
    top = (category or "").lower()
    full = f"{top}/{(sub_category or '').lower()}" if sub_category else None
    for p in policies:
        cats = p.get("categories") or []
        if cats and not (top in cats or (full is not None and full in cats)):
            continue
        prios = p.get("priorities") or []
        if prios and priority.lower() not in prios:
            continue
        return p
    return None


def pause_intervals(rows: list[tuple[str, datetime]], now: datetime) -> list[bt.Interval]:
    """The periods a ticket spent in a paused status, from its history (oldest first)."""
    out: list[bt.Interval] = []
    since: datetime | None = None
    for status, at in rows:
        paused = status in PAUSED
        if paused and since is None:
            since = at
        elif not paused and since is not None:
            out.append((since, at))
            since = None
    if since is not None:
        out.append((since, max(now, since) + timedelta(days=3660)))
    return out


def _minutes(policy: dict[str, Any], key: str) -> timedelta:
    return timedelta(minutes=int(policy[key]))


class SlaClocks:
    """Sets a ticket's deadline columns when it is raised and when its status changes."""

    def __init__(self, options: ScheduleOptions | None = None) -> None:
        self.options = options or ScheduleOptions()
        self.calendars = Calendars()

    # ---- look-ups -----------------------------------------------------------------------------
    def calendar(self, u: Unit, branch_id: int) -> bt.Calendar:
        branch = u.d.get(m.Branch, branch_id)
        assert branch is not None
        return self.calendars.of(branch, u.now)

    def policy_for(self, u: Unit, t: m.Ticket) -> dict[str, Any] | None:
        dep = u.d.get(m.Department, t.to_department_id)
        if dep is None or not dep.sla:
            return None
        cat = u.d.get(m.Category, t.category_id) if t.category_id else None
        sub = u.d.get(m.Category, t.sub_category_id) if t.sub_category_id else None
        return choose_policy(
            list(dep.sla),
            category=cat.name if cat else None,
            sub_category=sub.name if sub else None,
            priority=t.priority,
        )

    def pauses(self, u: Unit, t: m.Ticket) -> list[bt.Interval]:
        return pause_intervals(sq.status_times(u.conn, t.id), u.now)

    # ---- hooks of the ticket service ------------------------------------------------------------
    def raised(self, u: Unit, t: m.Ticket) -> None:
        """A new ticket, before its INSERT: its policy, and both clocks from now."""
        t.sla_policy = self.policy_for(u, t)
        t.sla_start = u.now
        if t.sla_policy is None:
            return
        cal = self.calendar(u, t.to_branch_id)
        t.first_response_due = bt.add(cal, u.now, _minutes(t.sla_policy, "first_response_minutes"))
        t.resolution_due = bt.add(cal, u.now, _minutes(t.sla_policy, "resolution_minutes"))

    def changed(
        self,
        u: Unit,
        t: m.Ticket,
        *,
        action: Action,
        before_status: Status,
        before_department: int,
        before_priority: str,
        before_category: int | None,
    ) -> None:
        """After an applied action (its history entry written): clocks met, paused, resumed or
        recomputed; reminder, auto-close and feedback deadlines set or cleared."""
        now = u.now
        status = Status(t.status)
        rerouted = t.to_department_id != before_department
        if rerouted:
            dep = u.d.get(m.Department, t.to_department_id)
            assert dep is not None
            t.to_branch_id = dep.branch_id
        remeasure = rerouted or t.priority != before_priority or t.category_id != before_category
        if remeasure:
            # A re-route (or a new category or priority) may bring another policy: the
            # clocks are measured again, from the start, in the new branch's calendar.
            t.sla_policy = self.policy_for(u, t)
        if action in FIRST_RESPONSE and t.first_responded_at is None:
            t.first_responded_at = now
        if action is Action.REOPEN:
            # A reopened ticket gets a fresh resolution clock (the old one was met).
            t.resolved_at = None
            t.sla_start = now
        # Delivering or rejecting answers the requester; a requester's own close or cancel
        # stops the clocks without meeting them (the report counts those as undecided).
        if status in (Status.DELIVERED, Status.REJECTED) and t.first_responded_at is None:
            t.first_responded_at = now
        if status is Status.DELIVERED and t.resolved_at is None:
            t.resolved_at = now
        if remeasure or action is Action.REOPEN or before_status in PAUSED or status in PAUSED:
            self.recompute(u, t)
        elif status is Status.DELIVERED or status in TERMINAL:
            self.recompute(u, t)  # clears them all, without reading anything
        else:
            # The deadlines stand; only a clock met now, or a chain with nothing left to
            # escalate, changes (no history read on the common path).
            if t.first_responded_at is not None:
                t.first_response_due = None
            if not _chain_running(t):
                t.escalation_due = t.escalation_from = None
        self._waiting(u, t, action, before_status, status)

    def recompute(self, u: Unit, t: m.Ticket) -> None:
        """Every SLA deadline from the ticket's state: none while paused or when met; else the
        target measured from the clock's start in business time, pauses cut out."""
        status = Status(t.status)
        pol = t.sla_policy
        if pol is None or status in PAUSED or status in TERMINAL or status is Status.DELIVERED:
            t.first_response_due = t.resolution_due = t.escalation_due = None
            if pol is None or status in TERMINAL or status is Status.DELIVERED:
                t.escalation_from = None
            return
        cal = self.calendar(u, t.to_branch_id)
        pauses = self.pauses(u, t)
        fr_open = t.first_responded_at is None
        res_open = t.resolved_at is None
        t.first_response_due = (
            bt.add(cal, t.created_at, _minutes(pol, "first_response_minutes"), pauses)
            if fr_open and not t.first_response_breached
            else None
        )
        start = t.sla_start or t.created_at
        t.resolution_due = (
            bt.add(cal, start, _minutes(pol, "resolution_minutes"), pauses)
            if res_open and not t.resolution_breached
            else None
        )
        steps = pol.get("escalation") or []
        if not _chain_running(t):
            t.escalation_due = t.escalation_from = None
        elif t.escalation_from is not None and t.escalation_step < len(steps):
            after = timedelta(minutes=int(steps[t.escalation_step]["after_minutes"]))
            t.escalation_due = bt.add(cal, t.escalation_from, after, pauses)
        else:
            t.escalation_due = None

    def _waiting(
        self, u: Unit, t: m.Ticket, action: Action, before: Status, status: Status
    ) -> None:
        """Reminder, auto-close and feedback deadlines of the new status."""
        now, o = u.now, self.options
        if status in AWAITING_REQUESTER:
            if status is not before or action in (Action.REPLY, Action.RETURN):
                cal = self.calendar(u, t.from_branch_id)
                t.reminder_due = bt.add(cal, now, o.reminder_after)
                t.reminders_sent = 0
        else:
            t.reminder_due = None
        t.auto_close_due = now + o.confirm_window if status is Status.DELIVERED else None
        if status in TERMINAL:
            if before not in TERMINAL and t.feedback_requests == 0 and not _answered(u, t):
                t.feedback_due = now + o.feedback_delay
        else:
            t.feedback_due = None


def _chain_running(t: m.Ticket) -> bool:
    """The escalation chain runs while a broken clock is still unmet."""
    return (t.first_response_breached and t.first_responded_at is None) or (
        t.resolution_breached and t.resolved_at is None
    )


def _answered(u: Unit, t: m.Ticket) -> bool:
    return sq.feedback_of(u.conn, t.id) is not None
