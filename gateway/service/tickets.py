"""The ticket service: applies every command in one transaction, records history, enqueues mail."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from gateway.domain.lifecycle import (
    TERMINAL,
    Action,
    Allowed,
    AssignmentType,
    Channel,
    Priority,
    Role,
    Status,
    decide,
    status_action,
)
from gateway.domain.routing import Party, PartyKind, route
from gateway.domain.tokens import ReplyTokens
from gateway.service.clock import Clock
from gateway.service.commands import (
    Act,
    AttachmentData,
    CommandResult,
    CommandSpec,
    RaiseTicket,
)
from gateway.service.directory import Directory, DirectoryCache
from gateway.service.errors import ActionRefused, AlreadyApplied, NotFound, UserFacingError
from gateway.service.notify import MailIdentity, Notifier, new_message_id, status_kind
from gateway.service.sla import SlaClocks
from store import models as m
from store import slack_queries as sq
from store import ticket_queries as q
from store.db import write_session
from store.ticket_queries import CopyRow

REF_RE = re.compile(r"^\s*TKT-(\d+)\s*$", re.IGNORECASE)


def parse_ref(ref: str) -> int:
    mt = REF_RE.match(ref)
    if not mt:
        raise NotFound(f"not a ticket reference: {ref!r} (expected TKT-<n>)")
    return int(mt.group(1))


@dataclass(frozen=True)
class ServiceOptions:
    reopen_window: timedelta = timedelta(days=7)
    auto_mail_per_day: int = 40
    auto_mail_per_ticket_hour: int = 10
    default_department: str = ""


class Unit:
    """One unit of work: a session inside one transaction, with the helpers a handler needs."""

    def __init__(
        self,
        svc: TicketService,
        session: Session,
        cache: DirectoryCache | None = None,
        *,
        now: datetime | None = None,
    ) -> None:
        self.svc = svc
        self.s = session
        # The transaction's connection, for the rows the unit only writes (history, messages,
        # copies …): Core statements on it, the same connection the session flushes on.
        self.conn = session.connection()
        if cache is not None:
            cache.sync(self.conn)
        self.d = Directory(session, cache)
        self.now = now or svc.clock.now()
        self._stored_blobs: set[str] = set()
        self.notify = Notifier(
            session,
            identity=svc.identity,
            tokens=svc.tokens,
            now=self.now,
            auto_mail_per_day=svc.options.auto_mail_per_day,
            auto_mail_per_ticket_hour=svc.options.auto_mail_per_ticket_hour,
            directory=self.d,
            connection=self.conn,
        )

    # ---- look-ups ---------------------------------------------------------------------------
    def ticket(self, ref: str | int, *, lock: bool = True) -> m.Ticket:
        tid = ref if isinstance(ref, int) else parse_ref(ref)
        t = self.s.get(m.Ticket, tid, with_for_update=lock)
        if t is None:
            raise NotFound(f"no ticket TKT-{tid}")
        return t

    def actor(self, email: str) -> m.Employee:
        e = self.d.employee(email)
        if e is None:
            raise NotFound(f"{email} is not an employee")
        if not e.active:
            raise ActionRefused(f"{email} is deactivated and can no longer raise or act")
        return e

    def once(self, key: str | None) -> None:
        """Record the request's idempotency key in this transaction; AlreadyApplied (and so a
        rollback of nothing) when it was recorded before: a Slack retry changes nothing."""
        if key is not None and not sq.claim_key(self.conn, key, self.now):
            raise AlreadyApplied(key)

    # ---- writes -----------------------------------------------------------------------------
    def history(
        self,
        t: m.Ticket,
        action: str,
        actor: m.Employee | None,
        channel: Channel,
        remark: str = "",
    ) -> None:
        row_id = q.insert_history(
            self.conn,
            ticket_id=t.id,
            status=t.status,
            action=action,
            actor_id=actor.id if actor else None,
            actor_label=actor.email if actor else "system",
            at=self.now,
            channel=channel.value,
            remark=remark,
        )
        self.notify.history_added(t.id, row_id)

    def store_blob(self, sha: str, data: bytes) -> None:
        """Content-addressed: one statement, a no-op when the bytes are already stored (and
        none at all for bytes this unit stored already)."""
        if sha in self._stored_blobs:
            return
        q.insert_blob_if_new(self.conn, sha256=sha, data=data)
        self._stored_blobs.add(sha)

    def add_message(
        self,
        t: m.Ticket,
        *,
        sender: m.Employee | None,
        body: str,
        channel: Channel,
        hidden: bool = False,
        html: str | None = None,
        message_id: str | None = None,
        raw_sha256: str | None = None,
        attachments: tuple[AttachmentData, ...] = (),
    ) -> int:
        """Store one message and its attachments; returns the message's id."""
        msg_id = q.insert_message(
            self.conn,
            ticket_id=t.id,
            sender_id=sender.id if sender else None,
            sender_label=sender.email if sender else "system",
            body=body,
            html=html,
            hidden=hidden,
            channel=channel.value,
            at=self.now,
            message_id=message_id,
            raw_sha256=raw_sha256,
        )
        for a in attachments:
            self.store_blob(a.sha256, a.data)
        for a in attachments:
            q.insert_attachment(
                self.conn,
                message_id=msg_id,
                sha256=a.sha256,
                filename=a.filename,
                content_type=a.content_type,
                size=len(a.data),
                inline=a.inline,
            )
        return msg_id

    def add_copy(self, t: m.Ticket, kind: str, party: Party) -> bool:
        emp_id = party.id if party.kind is PartyKind.EMPLOYEE else None
        dep_id = party.id if party.kind is PartyKind.DEPARTMENT else None
        copies = self.d.copies(t.id)
        if any(
            c.kind == kind and c.employee_id == emp_id and c.department_id == dep_id for c in copies
        ):
            return False
        row_id = q.insert_copy(
            self.conn,
            ticket_id=t.id,
            kind=kind,
            employee_id=emp_id,
            department_id=dep_id,
            added_at=self.now,
        )
        copies.append(CopyRow(row_id, kind, emp_id, dep_id))  # for this unit's cache
        return True

    # ---- raising ----------------------------------------------------------------------------
    def raise_ticket(
        self,
        *,
        requester: m.Employee,
        target: Party,
        rc: tuple[Party, ...],
        rhc: tuple[Party, ...],
        subject: str,
        body: str,
        channel: Channel,
        category: str = "",
        sub_address: str = "",
        priority: str = "",
        device: dict[str, object] | None = None,
        html: str | None = None,
        message_id: str | None = None,
        raw_sha256: str | None = None,
        attachments: tuple[AttachmentData, ...] = (),
        external: tuple[str, ...] = (),
        linked_ticket_id: int | None = None,
    ) -> m.Ticket:
        if target.org_id != requester.org_id:
            raise ActionRefused("the target belongs to another organization")
        if target.kind is PartyKind.DEPARTMENT:
            dep = self.d.get(m.Department, target.id)
            assert dep is not None
            assignment, to_emp = AssignmentType.DEPARTMENT, None
        else:
            to_emp = self.d.employee_by_id(target.id)
            if not to_emp.active:
                raise ActionRefused(f"{to_emp.email} is deactivated")
            dep = self.d.get(m.Department, to_emp.department_id)
            assert dep is not None
            assignment = AssignmentType.INDIVIDUAL
        cat, sub = self.d.category(requester.org_id, category) if category else (None, None)
        if category and cat is None:
            raise UserFacingError(f"unknown category {category!r}")
        if cat is None and sub_address:
            cat, sub = self.d.category(requester.org_id, sub_address)
        if cat is None and dep.default_category_id:
            cat = self.d.get(m.Category, dep.default_category_id)
        prio = (priority or Priority.NORMAL.value).lower()
        if prio not in {p.value for p in Priority}:
            raise UserFacingError(f"unknown priority {priority!r} (low, normal, high, urgent)")
        req_dep = self.d.get(m.Department, requester.department_id)
        assert req_dep is not None
        t = m.Ticket(
            org_id=requester.org_id,
            subject=subject.strip() or "(no subject)",
            description=body,
            category_id=cat.id if cat else None,
            sub_category_id=sub.id if sub else None,
            priority=prio,
            assignment_type=assignment.value,
            from_employee_id=requester.id,
            from_department_id=requester.department_id,
            from_branch_id=req_dep.branch_id,
            channel=channel.value,
            device=dict(device or {}),
            to_department_id=dep.id,
            to_employee_id=to_emp.id if to_emp else None,
            to_branch_id=dep.branch_id,
            status=Status.RAISED.value,
            escalation_level=0,
            linked_ticket_id=linked_ticket_id,
            root_message_id=message_id,
            created_at=self.now,
            updated_at=self.now,
        )
        # Its clocks before the INSERT, so that the new row is written once (no UPDATE).
        self.svc.sla.raised(self, t)
        self.s.add(t)
        self.s.flush()  # its id, for the rows that refer to it
        self.d.new_ticket(t.id)
        remark = ""
        if linked_ticket_id:
            remark = f"follows up TKT-{linked_ticket_id}"
        if external:
            remark = (
                (remark + "; " if remark else "")
                + "not added (outside the organization): "
                + ", ".join(external)
            )
        self.history(t, "raise", requester, channel, remark)
        for p in rc:
            if p.org_id == t.org_id:
                self.add_copy(t, "RC", p)
        for p in rhc:
            if p.org_id == t.org_id:
                self.add_copy(t, "RHC", p)
        self.add_message(
            t,
            sender=requester,
            body=body,
            channel=channel,
            html=html,
            message_id=message_id,
            raw_sha256=raw_sha256,
            attachments=attachments,
        )
        if t.root_message_id is None:
            t.root_message_id = new_message_id(f"TKT-{t.id}", self.svc.identity.domain)
        return t

    def notify_raised(
        self,
        t: m.Ticket,
        requester: m.Employee,
        *,
        ack: bool,
        applied: tuple[CommandResult, ...] = (),
        not_kept: tuple[str, ...] = (),
    ) -> None:
        """The requester's acknowledgement (with ``ack``; it names the files ``not_kept``,
        one line each, in ``extra["not_kept"]``) and the notice of the new ticket to everyone
        else on it."""
        if ack:
            self.notify.enqueue(
                t,
                "ack",
                actor=requester,
                only=frozenset({requester.id}),
                applied=applied,
                body=t.description,
                extra={"not_kept": "\n".join(not_kept)} if not_kept else None,
            )
        self.notify.enqueue(
            t, "new_ticket", actor=requester, exclude=frozenset({requester.id}), body=t.description
        )

    def attachments_not_kept(
        self, t: m.Ticket, sender: m.Employee, notes: tuple[str, ...], *, tell: bool
    ) -> None:
        """Files of ``sender``'s mail that were not kept (over the size caps), one ``notes``
        line each: a history line on the ticket names them; with ``tell`` the sender gets a
        mail saying so (on a new ticket the acknowledgement says it instead)."""
        if not notes:
            return
        self.history(t, "attachments_not_kept", None, Channel.SYSTEM, "; ".join(notes))
        if tell:
            self.notify.enqueue(
                t,
                "attachments_not_kept",
                actor=sender,
                only=frozenset({sender.id}),
                extra={"not_kept": "\n".join(notes)},
            )

    # ---- actions ----------------------------------------------------------------------------
    def apply(
        self,
        t: m.Ticket,
        actor: m.Employee | None,
        spec: CommandSpec,
        channel: Channel,
        *,
        notify: bool = True,
    ) -> CommandResult:
        """Apply one action of §1.5 (or refuse it, changing nothing)."""
        label = spec.raw or spec.action
        name = spec.action.strip().lower().replace("-", "_")
        if name == "status":
            act = status_action(spec.args[0]) if spec.args else None
            if act is None:
                return CommandResult(label, False, "status: unknown status")
            action = act
        else:
            try:
                action = Action(name)
            except ValueError:
                return CommandResult(label, False, f"unknown action {spec.action!r}")
        roles = self.d.roles_of(t, actor) if actor is not None else frozenset({Role.SYSTEM})
        if actor is not None and not roles:
            return CommandResult(label, False, "you are not a participant of this ticket")
        remark = spec.remark or " ".join(spec.args)
        decision = decide(
            action,
            status=Status(t.status),
            roles=roles,
            assignment=AssignmentType(t.assignment_type),
            remark=remark,
            closed_at=t.closed_at,
            now=self.now,
            reopen_window=self.svc.options.reopen_window,
        )
        if not isinstance(decision, Allowed):
            return CommandResult(label, False, decision.reason)
        before = self._state(t)
        before_status = Status(t.status)
        before_department, before_priority = t.to_department_id, t.priority
        before_category = t.category_id
        note = remark
        try:
            note = self._effects(t, actor, action, spec, remark)
        except UserFacingError as e:
            return CommandResult(label, False, e.reason)
        if decision.to is not None:
            t.status = decision.to.value
        t.updated_at = self.now
        # Only a real change is history: a cc of someone already copied, or a priority set to
        # what it was, is applied but leaves no entry (and sends no mail).
        changed = self._state(t) != before
        if changed:
            self.history(t, action.value, actor, channel, note)
            self.svc.sla.changed(
                self,
                t,
                action=action,
                before_status=before_status,
                before_department=before_department,
                before_priority=before_priority,
                before_category=before_category,
            )
        if notify and changed:
            kind = status_kind(action)
            exclude = frozenset({actor.id}) if actor is not None else frozenset()
            # A hidden-copy change is news only for those who may see hidden copies.
            self.notify.enqueue(
                t,
                kind,
                actor=actor,
                exclude=exclude,
                remark=note,
                hidden=action is Action.BCC,
            )
        return CommandResult(label, True, "")

    def _state(self, t: m.Ticket) -> tuple[object, ...]:
        """What an action can change on a ticket (besides messages), to tell a change from a no-op."""
        # The unit's copies of the ticket: loaded once, kept current by `add_copy`.
        copies = len(self.d.copies(t.id))
        return (
            t.status,
            t.owner_id,
            t.to_employee_id,
            t.to_department_id,
            t.category_id,
            t.sub_category_id,
            t.priority,
            t.escalation_level,
            t.closed_at,
            copies,
        )

    def _effects(
        self, t: m.Ticket, actor: m.Employee | None, action: Action, spec: CommandSpec, remark: str
    ) -> str:
        """Field effects of an allowed action; returns the history remark."""
        if action is Action.TAKE and actor is not None:
            t.owner_id = actor.id
        elif action is Action.RELEASE:
            t.owner_id = None
        elif action is Action.ESCALATE:
            t.escalation_level += 1
            return remark or f"escalation level {t.escalation_level}"
        elif action in (Action.CLOSE, Action.CANCEL, Action.REJECT):
            t.closed_at = self.now
        elif action is Action.REOPEN:
            t.closed_at = None
        elif action is Action.ASSIGN:
            if not spec.args:
                raise UserFacingError("assign: name an employee by email")
            emp = self.d.employee(spec.args[0])
            if emp is None or emp.org_id != t.org_id or not emp.active:
                raise UserFacingError(f"assign: {spec.args[0]} is not an active employee here")
            if t.assignment_type == AssignmentType.DEPARTMENT.value:
                if emp.department_id != t.to_department_id:
                    raise UserFacingError(f"assign: {emp.email} is not a member of the department")
                t.owner_id = emp.id
            else:
                t.to_employee_id = emp.id
                t.to_department_id = emp.department_id
                # The previous assignee's ownership must not outlive the reassignment.
                t.owner_id = None
            return f"assigned to {emp.email}"
        elif action in (Action.CC, Action.BCC):
            if not spec.args:
                raise UserFacingError(f"{action.value}: name at least one address")
            added = []
            for a in spec.args:
                r = self.d.resolve(a)
                if r is None or r.party.org_id != t.org_id:
                    raise UserFacingError(
                        f"{action.value}: {a} is not an employee or department here"
                    )
                if self.add_copy(t, "RC" if action is Action.CC else "RHC", r.party):
                    added.append(a.lower())
            # Never name a hidden copy in history: history is shown to visible participants.
            return "copy added: " + ", ".join(added) if action is Action.CC else "hidden copy added"
        elif action is Action.CATEGORY:
            cat, sub = self.d.category(t.org_id, " ".join(spec.args) or remark)
            if cat is None:
                raise UserFacingError(f"category: unknown category {' '.join(spec.args)!r}")
            t.category_id, t.sub_category_id = cat.id, sub.id if sub else None
            return f"category {cat.name}" + (f"/{sub.name}" if sub else "")
        elif action is Action.PRIORITY:
            p = (spec.args[0] if spec.args else remark).lower()
            if p not in {x.value for x in Priority}:
                raise UserFacingError(f"priority: unknown priority {p!r}")
            t.priority = p
            return f"priority {p}"
        return remark

    def post(
        self,
        t: m.Ticket,
        sender: m.Employee,
        body: str,
        channel: Channel,
        *,
        html: str | None = None,
        message_id: str | None = None,
        raw_sha256: str | None = None,
        attachments: tuple[AttachmentData, ...] = (),
        status_effect: bool = True,
        in_reply_to: str | None = None,
        applied: tuple[CommandResult, ...] = (),
        action: Action | None = None,
        origin: str = "",
    ) -> tuple[int, CommandResult]:
        """A message from a participant: reply (assignee), respond/message (requester), RC/RHC;
        returns the new message's id and the result of the action it took.

        ``action`` is the one the sender named (CLI, Slack): then the table judges that action
        rather than the one their roles suggest; a hidden copy may only name ``message``.
        ``origin``: the Slack channel whose thread the message was written in (it is not
        posted back there).
        """
        roles = self.d.roles_of(t, sender)
        if not roles:
            raise ActionRefused("you are not a participant of this ticket")
        if Status(t.status) in TERMINAL:
            raise ActionRefused(f"the ticket is {t.status}; it takes no more messages")
        hidden = Role.RHC in roles and not (
            roles & {Role.ASSIGNEE, Role.REQUESTER, Role.RC, Role.OWNER}
        )
        result = CommandResult("message", True)
        if action is not None and not (hidden and action is Action.MESSAGE):
            result = self.apply(t, sender, CommandSpec(action.value), channel, notify=False)
            if not result.applied:
                raise ActionRefused(result.reason)
        elif status_effect and not hidden:
            if Role.ASSIGNEE in roles and Role.REQUESTER not in roles:
                act = Action.REPLY
            elif Role.REQUESTER in roles and t.status in (
                Status.REPLIED.value,
                Status.RETURNED.value,
            ):
                act = Action.RESPOND
            elif Role.ASSIGNEE in roles:
                act = Action.REPLY
            else:
                act = Action.MESSAGE
            result = self.apply(t, sender, CommandSpec(act.value), channel, notify=False)
            if not result.applied:
                raise ActionRefused(result.reason)
        msg = self.add_message(
            t,
            sender=sender,
            body=body,
            channel=channel,
            hidden=hidden,
            html=html,
            message_id=message_id,
            raw_sha256=raw_sha256,
            attachments=attachments,
        )
        t.updated_at = self.now
        self.notify.enqueue(
            t,
            "new_message",
            actor=sender,
            exclude=frozenset({sender.id}),
            hidden=hidden,
            body=body,
            in_reply_to=in_reply_to or message_id,
            extra={"slack_origin": origin} if origin else None,
        )
        if applied:
            self.notify.enqueue(
                t,
                "status_change",
                actor=sender,
                only=frozenset({sender.id}),
                applied=applied,
                hidden=hidden,
            )
        return msg, result


class TicketService:
    """The one place that decides; every channel calls in here."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        clock: Clock,
        identity: MailIdentity,
        tokens: ReplyTokens | None,
        options: ServiceOptions = ServiceOptions(),
        sla: SlaClocks | None = None,
        on_outbox: Callable[[], None] = lambda: None,
    ) -> None:
        self.sessions = sessions
        self.clock = clock
        self.identity = identity
        self.tokens = tokens
        self.options = options
        self.sla = sla or SlaClocks()
        # Run after a unit that recorded notification events committed (`run` wakes its
        # delivery workers with it, see bootstrap.Doorbells).
        self.on_outbox = on_outbox

    @contextmanager
    def unit(
        self, cache: DirectoryCache | None = None, *, now: datetime | None = None
    ) -> Iterator[Unit]:
        """A transaction: committed when the block ends, rolled back on any exception.
        ``cache``: organization rows kept from earlier transactions of the same thread;
        ``now``: the instant the unit acts at (the scheduler's `tick --at`), else the clock's.
        After a commit that recorded notification events, ``on_outbox`` runs."""
        try:
            with write_session(self.sessions) as s:
                u = Unit(self, s, cache, now=now)
                yield u
        except BaseException:
            if cache is not None:
                # A rollback expires what the session loaded: held rows would be unreadable.
                cache.clear()
            raise
        if u.notify.enqueued:
            self.on_outbox()

    # ---- commands from the CLI (and Slack) ---------------------------------------------------
    def raise_ticket(self, cmd: RaiseTicket, *, once: str | None = None) -> str:
        """Raise a ticket; ``once``: an idempotency key (AlreadyApplied when seen before)."""
        with self.unit() as u:
            u.once(once)
            requester = u.actor(cmd.requester)
            resolved = u.d.resolve(cmd.to)
            if resolved is None or resolved.party.org_id != requester.org_id:
                raise NotFound(f"{cmd.to} is not a department address or employee here")
            if resolved.party == Party(PartyKind.EMPLOYEE, requester.id, requester.org_id):
                raise ActionRefused("you cannot raise a ticket to yourself")
            copies: list[list[Party]] = [[], []]
            for i, addrs in enumerate((cmd.cc, cmd.bcc)):
                for a in addrs:
                    r = u.d.resolve(a)
                    if r is None or r.party.org_id != requester.org_id:
                        raise NotFound(f"{a} is not an employee or department here")
                    copies[i].append(r.party)
            me = Party(PartyKind.EMPLOYEE, requester.id, requester.org_id)
            routing = route(
                to=[resolved.party], cc=copies[0], envelope_only=copies[1], default=None, sender=me
            )
            assert routing.target is not None
            t = u.raise_ticket(
                requester=requester,
                target=routing.target,
                rc=routing.rc,
                rhc=routing.rhc,
                subject=cmd.subject,
                body=cmd.body,
                channel=cmd.channel,
                category=cmd.category,
                sub_address=resolved.sub_address,
                priority=cmd.priority,
                device=cmd.device,
                attachments=cmd.attachments,
            )
            u.notify_raised(t, requester, ack=True)
            return f"TKT-{t.id}"

    def act(self, cmd: Act, *, once: str | None = None) -> CommandResult:
        """Apply an action as ``cmd.actor``; raises ActionRefused when the table says no.
        ``once``: an idempotency key (AlreadyApplied when seen before)."""
        with self.unit() as u:
            u.once(once)
            actor = u.actor(cmd.actor)
            t = u.ticket(cmd.ref)
            if not u.d.roles_of(t, actor):
                # Across organizations a ticket is simply not there.
                raise NotFound(f"no ticket {cmd.ref.upper()} for {actor.email}")
            name = cmd.action.lower().replace("-", "_")
            if name in ("reply", "respond", "message"):
                if not cmd.body.strip():
                    raise UserFacingError(f"{name}: give the message text")
                _, result = u.post(t, actor, cmd.body, cmd.channel, action=Action(name))
                return result
            result = u.apply(
                t, actor, CommandSpec(name, cmd.args, cmd.remark, raw=cmd.action), cmd.channel
            )
            if not result.applied:
                raise ActionRefused(result.reason)
            return result

    def now(self) -> datetime:
        return self.clock.now()
