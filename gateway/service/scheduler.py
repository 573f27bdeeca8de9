"""The scheduler's one job: do the work due at an instant — SLA breaches, escalation steps,
reminders, auto-close, feedback requests — each step once (SPEC §4).

A tick claims due tickets by their indexed deadline columns (`FOR UPDATE SKIP LOCKED` on
PostgreSQL), works each one in a savepoint of the batch's transaction and moves its deadlines
on; a step's key (ticket, kind, step, deadline) is written with it, so a second process, or the
same tick delivered twice, does nothing more. APScheduler (gateway/scheduler/) only calls it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from gateway.domain import business_time as bt
from gateway.domain.lifecycle import AssignmentType, Channel, Status
from gateway.domain.routing import Party, PartyKind
from gateway.service.commands import CommandSpec
from gateway.service.storage import storage_errors
from gateway.service.tickets import TicketService, Unit
from store import models as m
from store import schedule_queries as sq
from store import slack_queries

log = logging.getLogger("ticketgate.scheduler")

_CLOCKS = {"first_response": "first-response", "resolution": "resolution"}
# SPEC §4: the question fits the outcome.
QUESTIONS = {
    Status.CLOSED.value: "How was the service you received on this ticket?",
    Status.CANCELLED.value: (
        "You cancelled this ticket. Was it clear to you what would happen with it, and how"
        " would you rate the way it was handled?"
    ),
    Status.REJECTED.value: (
        "This ticket was rejected. Was the decision and its reason clear to you, and how would"
        " you rate the way it was handled?"
    ),
}
REMINDER_PREFIX = "A reminder, in case our first mail got lost: "

# Applied Slack ids (a retried event, command, click or modal finds its id and changes nothing)
# are kept this long: Slack retries for minutes, not days. Each tick forgets up to
# SLACK_IDS_PER_TICK of the older ones, so that the table holds about a week. A message's
# `raise:` id stays: it is what makes a second :ticket: reaction, months later, raise nothing.
SLACK_IDS_KEPT = timedelta(days=7)
SLACK_IDS_PER_TICK = 10_000
SLACK_IDS_KEPT_FOR_EVER = ("raise:",)


@dataclass
class TickReport:
    """What one tick did, by kind (breach_first_response, escalation, reminder …)."""

    at: datetime
    counts: Counter[str] = field(default_factory=Counter)
    tickets: int = 0
    failed: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _hours(minutes: int) -> str:
    h, mins = divmod(int(minutes), 60)
    return f"{h}h{mins:02d}m" if mins else f"{h}h"


class Scheduler:
    """Runs all work due at an instant, once."""

    def __init__(
        self, svc: TicketService, *, on_storage_error: Callable[[], None] = lambda: None
    ) -> None:
        self.svc = svc
        self.sla = svc.sla
        self.options = svc.sla.options
        self.on_storage_error = on_storage_error
        self.totals: Counter[str] = Counter()  # since start, for /metrics
        self.ticks = 0
        # A department's active members, looked up once per batch (a batch's unit).
        self._members: dict[int, list[m.Employee]] = {}

    def tick(self, at: datetime | None = None) -> TickReport:
        """Everything due at ``at`` (default: the clock's now), in batches of due tickets;
        then the applied Slack ids older than `SLACK_IDS_KEPT` are forgotten (not a
        message's `raise:` id)."""
        now = at or self.svc.clock.now()
        report = TickReport(now)
        failed: set[int] = set()
        while True:
            with storage_errors(self.on_storage_error), self.svc.unit(now=now) as u:
                ids = sq.lock_due_tickets(u.s, now=now, limit=self.options.batch)
                fresh = [i for i in ids if i not in failed]
                if not fresh:
                    break
                self._members = {}
                tickets = {t.id: t for t in sq.tickets_by_id(u.s, fresh)}
                for tid in fresh:
                    t = tickets[tid]
                    try:
                        with u.s.begin_nested():
                            report.counts += self._work(u, t, now)
                        report.tickets += 1
                    except Exception:  # one bad ticket must not stop everyone's deadlines
                        log.exception("scheduler: TKT-%d failed; its work stays due", tid)
                        failed.add(tid)
                        report.failed += 1
                        u.s.expire(t)
            if len(fresh) < self.options.batch and not failed:
                break
        with storage_errors(self.on_storage_error), self.svc.unit(now=now) as u:
            forgotten = slack_queries.forget_applied_ids(
                u.conn,
                before=now - SLACK_IDS_KEPT,
                limit=SLACK_IDS_PER_TICK,
                keep_prefixes=SLACK_IDS_KEPT_FOR_EVER,
            )
        if forgotten:
            report.counts["slack_ids_forgotten"] = forgotten
        self.ticks += 1
        self.totals += report.counts
        self.totals["failed"] += report.failed
        if report.total or report.failed:
            done = ", ".join(f"{k} {n}" for k, n in sorted(report.counts.items()))
            log.info(
                "tick %s: %s%s",
                now.isoformat(),
                done or "nothing done",
                f"; {report.failed} ticket(s) failed" if report.failed else "",
            )
        return report

    # ---- one ticket -------------------------------------------------------------------------------
    def _work(self, u: Unit, t: m.Ticket, now: datetime) -> Counter[str]:
        done: Counter[str] = Counter()
        for clock in _CLOCKS:
            due = getattr(t, f"{clock}_due")
            if due is not None and due <= now:
                self._breach(u, t, clock, due, done)
        for _ in range(100):  # a chain is short; the bound only guards against a bad policy
            due = t.escalation_due
            if due is None or due > now:
                break
            self._step(u, t, due, done)
        if t.reminder_due is not None and t.reminder_due <= now:
            self._remind(u, t, t.reminder_due, done)
        if t.auto_close_due is not None and t.auto_close_due <= now:
            self._auto_close(u, t, t.auto_close_due, done)
        if t.feedback_due is not None and t.feedback_due <= now:
            self._request_feedback(u, t, t.feedback_due, done)
        return done

    def _claim(self, u: Unit, t: m.Ticket, kind: str, step: int, due: datetime) -> bool:
        return sq.claim_step(u.conn, ticket_id=t.id, kind=kind, step=step, due_at=due, now=u.now)

    def _local(self, u: Unit, t: m.Ticket, at: datetime) -> str:
        branch = u.d.get(m.Branch, t.to_branch_id)
        zone = ZoneInfo(branch.timezone) if branch is not None else None
        return at.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")

    def _breach(self, u: Unit, t: m.Ticket, clock: str, due: datetime, done: Counter[str]) -> None:
        setattr(t, f"{clock}_due", None)
        if not self._claim(u, t, f"breach_{clock}", 0, due):
            return
        setattr(t, f"{clock}_breached", True)
        pol = t.sla_policy or {}
        target = _hours(pol.get(f"{clock}_minutes", 0))
        label = _CLOCKS[clock]
        u.history(
            t,
            "sla_breach",
            None,
            Channel.SYSTEM,
            f"{label} target of {target} business hours missed (due {self._local(u, t, due)})",
        )
        done[f"breach_{clock}"] += 1
        log.info("TKT-%d: %s target missed (due %s)", t.id, label, due.isoformat())
        steps = pol.get("escalation") or []
        if t.escalation_from is None and t.escalation_step < len(steps):
            # The chain counts from the breach, not from the tick that noticed it.
            t.escalation_from = due
            cal = self.sla.calendar(u, t.to_branch_id)
            after = timedelta(minutes=int(steps[t.escalation_step]["after_minutes"]))
            t.escalation_due = bt.add(cal, due, after)

    def _step(self, u: Unit, t: m.Ticket, due: datetime, done: Counter[str]) -> None:
        pol = t.sla_policy or {}
        steps = pol.get("escalation") or []
        i = t.escalation_step
        t.escalation_due = None
        if i >= len(steps) or not self._claim(u, t, "escalation", i, due):
            return
        step = steps[i]
        last = i == len(steps) - 1
        why = "first response" if t.first_response_breached and not t.first_responded_at else ""
        why = why or "resolution"
        remark = f"escalation step {i + 1} of {len(steps)} ({why} target missed): {step['notify']}"
        r = self.svc_apply(u, t, "escalate", remark)
        if not r:
            return
        if last:
            self.svc_apply(u, t, "to_higher_authority", f"last escalation step ({why})")
        ids = self._recipients(u, t, str(step["notify"]))
        u.notify.enqueue(
            t,
            "escalation",
            actor=None,
            only=frozenset(ids),
            remark=remark,
            extra={"level": str(t.escalation_level)},
        )
        t.escalation_step = i + 1
        self.sla.recompute(u, t)  # the next step's deadline, pauses cut out
        done["escalation"] += 1
        if last:
            done["to_higher_authority"] += 1
        log.info(
            "TKT-%d: escalated to level %d (step %d of %d%s)",
            t.id,
            t.escalation_level,
            i + 1,
            len(steps),
            ", TO_HIGHER_AUTHORITY" if last else "",
        )

    def svc_apply(self, u: Unit, t: m.Ticket, action: str, remark: str) -> bool:
        """A system action through the lifecycle table (history and clocks as for anyone)."""
        r = u.apply(t, None, CommandSpec(action, remark=remark), Channel.SYSTEM, notify=False)
        if not r.applied:
            log.warning("TKT-%d: %s refused: %s", t.id, action, r.reason)
        return r.applied

    def _members_of(self, u: Unit, department_id: int) -> list[m.Employee]:
        found = self._members.get(department_id)
        if found is None:
            found = self._members[department_id] = u.d.members(department_id)
        return found

    def _recipients(self, u: Unit, t: m.Ticket, notify: str) -> list[int]:
        """Who a step tells: the owner (else the assignee side), the department's higher
        authority, or a named employee or department — those not on the ticket are added as
        copies (RC), so they can read it and answer."""
        kind, _, who = notify.partition(":")
        if kind == "owner":
            if t.owner_id is not None:
                return [t.owner_id]
            if t.assignment_type == AssignmentType.INDIVIDUAL.value and t.to_employee_id:
                return [t.to_employee_id]
            return [e.id for e in self._members_of(u, t.to_department_id)]
        if kind == "higher_authority":
            top = u.d.top_level(t.to_department_id)
            return [e.id for e in self._members_of(u, t.to_department_id) if e.role.level == top]
        if kind == "employee":
            emp = u.d.employee(who)
            if emp is None or not emp.active or emp.org_id != t.org_id:
                log.warning("TKT-%d: escalation names %s, not an active employee", t.id, who)
                return []
            if not u.d.roles_of(t, emp):
                u.add_copy(t, "RC", Party(PartyKind.EMPLOYEE, emp.id, emp.org_id))
            return [emp.id]
        found = u.d.department(who)
        if found is None or found[0].org_id != t.org_id:
            log.warning("TKT-%d: escalation names %s, not a department", t.id, who)
            return []
        dep = found[0]
        if dep.id != t.to_department_id:
            u.add_copy(t, "RC", Party(PartyKind.DEPARTMENT, dep.id, dep.org_id))
        return [e.id for e in self._members_of(u, dep.id)]

    def _remind(self, u: Unit, t: m.Ticket, due: datetime, done: Counter[str]) -> None:
        n = t.reminders_sent + 1
        t.reminder_due = None
        if n > self.options.reminder_max or not self._claim(u, t, "reminder", n, due):
            return
        u.history(
            t,
            "reminder",
            None,
            Channel.SYSTEM,
            f"reminder {n} of {self.options.reminder_max} to the requester",
        )
        u.notify.enqueue(
            t,
            "reminder",
            actor=None,
            only=frozenset({t.from_employee_id}),
            extra={"number": str(n), "of": str(self.options.reminder_max)},
        )
        t.reminders_sent = n
        if n < self.options.reminder_max:
            cal = self.sla.calendar(u, t.from_branch_id)
            t.reminder_due = bt.add(cal, u.now, self.options.reminder_after)
        done["reminder"] += 1
        log.info("TKT-%d: reminder %d sent to the requester", t.id, n)

    def _auto_close(self, u: Unit, t: m.Ticket, due: datetime, done: Counter[str]) -> None:
        t.auto_close_due = None
        if t.status != Status.DELIVERED.value or not self._claim(u, t, "auto_close", 0, due):
            return
        hours = int(self.options.confirm_window.total_seconds() // 3600)
        remark = f"closed automatically: delivered and not reopened within {hours} h"
        r = u.apply(t, None, CommandSpec("close", remark=remark), Channel.SYSTEM)
        if r.applied:
            done["auto_close"] += 1
            log.info("TKT-%d: closed automatically after the confirm window", t.id)

    def _request_feedback(self, u: Unit, t: m.Ticket, due: datetime, done: Counter[str]) -> None:
        n = t.feedback_requests + 1
        t.feedback_due = None
        if n > 2 or sq.feedback_of(u.conn, t.id) is not None:
            return  # one request and one reminder, none once answered
        if not self._claim(u, t, "feedback_request", n, due):
            return
        question = QUESTIONS.get(t.status, QUESTIONS[Status.CLOSED.value])
        if n == 2:
            question = REMINDER_PREFIX + question[0].lower() + question[1:]
        u.history(
            t,
            "feedback_request",
            None,
            Channel.SYSTEM,
            "feedback requested" if n == 1 else "feedback reminder sent",
        )
        u.notify.enqueue(
            t,
            "feedback_request",
            actor=None,
            only=frozenset({t.from_employee_id}),
            extra={"question": question},
        )
        t.feedback_requests = n
        if n == 1:
            t.feedback_due = u.now + self.options.feedback_reminder_after
        done["feedback_request" if n == 1 else "feedback_reminder"] += 1
        log.info("TKT-%d: feedback %s sent", t.id, "request" if n == 1 else "reminder")
