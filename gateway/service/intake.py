"""The intake runner's side of the service: decide the fate of each queued mail in one transaction.

A queued mail is parsed by the runner (gateway/runners/intake.py) and handed here. In one
transaction for a batch: the mails still queued are claimed in arrival order, a reply waits
while its parent is still queued (or, for a short window, while it names only Message-IDs never
seen), and each of the others is applied — quarantine, sender check, threading (SPEC §2.3),
raise or post — and its processing record set to the outcome.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from gateway.domain.lifecycle import TERMINAL, Channel, Priority, Role, Status
from gateway.domain.routing import Party, PartyKind, route
from gateway.domain.subjects import find_ticket_refs
from gateway.domain.tokens import token_from_address
from gateway.service import feedback
from gateway.service.commands import (
    CommandResult,
    CommandSpec,
    IntakeResult,
    ParsedMail,
    QueuedMail,
    ReceiveMail,
)
from gateway.service.directory import DirectoryCache
from gateway.service.errors import StorageUnavailable, UserFacingError
from gateway.service.storage import storage_errors
from gateway.service.tickets import TicketService, Unit
from store import inbound_queue as queue
from store import models as m
from store.db import read_session
from store.directory_queries import employee_by_address

log = logging.getLogger("ticketgate.intake")

# A reply waits for a parent queued after it for at most this many reference windows.
PARENT_WAIT_LIMIT = 20

# Commands that are raise-time parameters when they arrive with a new ticket.
_RAISE_PARAMS = {"category", "priority", "cc", "bcc"}


@dataclass(frozen=True)
class IntakeOptions:
    sender_rate_per_hour: int = 120
    sender_burst_per_minute: int = 20
    refuse_dmarc_fail: bool = True
    # A mail naming only Message-IDs never seen waits this long for its parent (which may
    # still be in DATA on another connection) before it is taken as a new ticket.
    reference_wait: timedelta = timedelta(seconds=3)
    # A reply whose parent is still queued is looked at again after this (or at once when
    # the parent is processed).
    parent_retry: timedelta = timedelta(seconds=1)
    # A mail whose processing raised this many times is quarantined (poison mail).
    max_attempts: int = 3


@dataclass
class _BatchState:
    """What `MailIntake._process` learns and decides for one batch of mails."""

    # Per claimed mail (and per queued parent it names): the Message-IDs it names.
    refs_of_queued: dict[int, list[str]] = field(default_factory=dict)
    # What became of each mail, written together when the batch is applied.
    outcomes: list[queue.Outcome] = field(default_factory=list)


class MailIntake:
    """Decides the fate of queued mail; the intake runner calls `waiting` and `process`."""

    def __init__(
        self,
        service: TicketService,
        options: IntakeOptions = IntakeOptions(),
        *,
        on_storage_error: Callable[[], None] = lambda: None,
    ) -> None:
        self.svc = service
        self.options = options
        self.on_storage_error = on_storage_error
        # Organization rows kept from batch to batch while the directory version stays (the
        # same senders and departments come again and again); one runner, one thread.
        self._directory = DirectoryCache()
        # The batch at hand, per thread (tests drive one runner from several threads at once).
        self._local = threading.local()

    def is_colleague(self, address: str) -> bool:
        """Whether `address` is an active employee's (`rules.FluflBounce` asks while the
        runner parses): from the runner's directory cache, else read once and kept there.
        When the database cannot be read the answer is no, as it was before anyone asked:
        the batch's own transaction then meets the same trouble and the mail stays queued."""
        try:
            employee = self._directory.employee(address, self._read_employee)
        except StorageUnavailable:
            return False
        return employee is not None and employee.active

    def _read_employee(self, address: str) -> m.Employee | None:
        with storage_errors(self.on_storage_error), read_session(self.svc.sessions) as s:
            return employee_by_address(s, address)

    # ---- the queue ------------------------------------------------------------------------------
    def waiting(
        self,
        limit: int,
        *,
        max_bytes: int | None = None,
        queue_slice: tuple[int, int] = (0, 1),
    ) -> list[QueuedMail]:
        """The oldest queued mails that may be processed now (read without a write lock): at
        most `limit`, and no more than `max_bytes` of raw mail unless the first is bigger;
        of `queue_slice` (i, n) only the mails whose record id is i modulo n."""
        with storage_errors(self.on_storage_error), read_session(self.svc.sessions) as s:
            rows = queue.queued_batch(
                s,
                now=self.svc.now(),
                limit=limit,
                max_bytes=max_bytes,
                queue_slice=queue_slice,
            )
        return [
            QueuedMail(
                record_id=r.id,
                at=r.at,
                channel=Channel(r.channel),
                envelope_from=r.envelope_from,
                envelope_rcpts=r.envelope_rcpts,
                raw=r.raw,
                attempts=r.attempts,
                released=r.rule == queue.RELEASED,
            )
            for r in rows
        ]

    def process(self, batch: Sequence[ParsedMail]) -> list[tuple[int, IntakeResult]]:
        """Apply a batch of parsed mails in one transaction; (record id, result) for each mail
        that left the queue. A mail that raises sends the batch back to be applied one mail per
        transaction, where it counts a failed attempt (quarantined after the last). Storage
        errors raise: nothing was applied, the mails stay queued."""
        try:
            with storage_errors(self.on_storage_error), self.svc.unit(self._directory) as u:
                return self._process(u, batch)
        except Exception as e:
            if isinstance(e, StorageUnavailable):
                raise
            if len(batch) == 1:
                return [self._failed(batch[0], e)]
            log.warning("a batch of %d queued mails raised; applying them one by one", len(batch))
            results: list[tuple[int, IntakeResult]] = []
            for one in batch:
                results += self.process([one])
            return results

    def _process(self, u: Unit, batch: Sequence[ParsedMail]) -> list[tuple[int, IntakeResult]]:
        """The batch's mails, in one transaction; their outcomes and notification events are
        written together at the end (one executemany each), not mail by mail."""
        self._local.batch = batch_state = _BatchState()
        with u.notify.batched():
            results = self._apply_batch(u, batch)
        queue.finish_many(u.s, batch_state.outcomes)
        return results

    @property
    def _batch(self) -> _BatchState:
        state: _BatchState = self._local.batch
        return state

    def _apply_batch(self, u: Unit, batch: Sequence[ParsedMail]) -> list[tuple[int, IntakeResult]]:
        by_id = {p.mail.record_id: p for p in batch}
        claimed = queue.lock_queued(u.s, by_id)
        refs = queue.refs_of(u.s, claimed)
        named = {mid for ids in refs.values() for mid in ids}
        still_queued = queue.queued_with_message_ids(u.s, named)
        seen = queue.seen_message_ids(u.s, named)
        # What the queued parents name in turn (two mails naming each other, see _must_wait).
        newer = {pid for pid in still_queued.values() if pid not in refs}
        self._batch.refs_of_queued = {**refs, **queue.refs_of(u.s, newer)} if newer else dict(refs)
        results: list[tuple[int, IntakeResult]] = []
        processed_ids: list[str] = []
        pending = list(claimed)
        progress = True
        while pending and progress:
            progress = False
            later: list[int] = []
            for rid in pending:
                p = by_id[rid]
                wait = self._must_wait(u, p, refs.get(rid, []), still_queued, seen)
                if wait is not None:
                    later.append(rid)
                    continue
                progress = True
                results.append((rid, self._apply_parsed(u, p)))
                mid = p.cmd.message_id if p.cmd is not None else None
                if mid is not None:
                    if still_queued.get(mid) == rid:
                        del still_queued[mid]
                    seen.add(mid)
                    processed_ids.append(mid)
            pending = later
        # Replies deferred in earlier batches whose parent this batch processed: at once.
        queue.release_replies_to(u.s, processed_ids)
        for rid in pending:
            p = by_id[rid]
            wait = self._must_wait(u, p, refs.get(rid, []), still_queued, seen)
            assert wait is not None
            queue.defer(u.s, rid, until=wait)
            results.append((rid, IntakeResult("deferred", "waiting for the mail it replies to")))
        return [(rid, r) for rid, r in results if r.outcome != "deferred"] + [
            (rid, r) for rid, r in results if r.outcome == "deferred"
        ]

    def _must_wait(
        self,
        u: Unit,
        p: ParsedMail,
        refs: list[str],
        still_queued: dict[str, int],
        seen: set[str],
    ) -> datetime | None:
        """When a mail must wait (until when), or None: it may be processed now.

        A parent still queued is waited for: one that arrived earlier is processed first, so
        that wait ends; one that arrived later (the MTA delivered the reply first) unless it
        names this mail itself (two mails naming each other: the older goes first), and at
        most `PARENT_WAIT_LIMIT` reference windows. A mail naming only Message-IDs never seen
        waits one reference window for a parent that may still be on its way."""
        if not refs or p.cmd is None:
            return None
        opts = self.options
        rid = p.mail.record_id
        parents = [still_queued[r] for r in refs if r in still_queued and still_queued[r] != rid]
        if any(pid < rid for pid in parents):
            return u.now + opts.parent_retry
        if parents:
            mine = p.cmd.message_id
            names_me = mine is not None and any(
                mine in self._batch.refs_of_queued.get(pid, ()) for pid in parents
            )
            limit = p.mail.at + opts.reference_wait * PARENT_WAIT_LIMIT
            if not names_me and u.now < limit:
                return min(u.now + opts.parent_retry, limit)
            return None
        deadline = p.mail.at + opts.reference_wait
        if u.now >= deadline:
            return None
        if any(r in seen for r in refs) or self._has_reply_token(p.cmd):
            return None
        return deadline

    def _has_reply_token(self, cmd: ReceiveMail) -> bool:
        ident = self.svc.identity
        return any(
            token_from_address(a, local=ident.reply_local, domain=ident.domain) is not None
            for a in cmd.envelope_rcpts
        )

    def _apply_parsed(self, u: Unit, p: ParsedMail) -> IntakeResult:
        rid = p.mail.record_id
        if p.cmd is None:
            return _keep_failed(u, p.mail, p.error.split(":", 1)[0], _clean(p.error), "parse")
        return self.apply(u, p.cmd, rid, arrived=p.mail.at, released=p.mail.released)

    def _failed(self, p: ParsedMail, error: Exception) -> tuple[int, IntakeResult]:
        """Applying one mail raised (a bug, or input nobody foresaw): count the attempt, and
        after the last one keep the mail in quarantine with the error (poison mail)."""
        rid = p.mail.record_id
        text = _clean(f"{type(error).__name__}: {error}")
        log.error("queued mail %d could not be processed", rid, exc_info=error)
        with storage_errors(self.on_storage_error), self.svc.unit() as u:
            attempts = queue.note_failure(u.s, rid, error=text)
            if attempts < self.options.max_attempts:
                return rid, IntakeResult("queued", f"attempt {attempts} failed: {text}")
            kept = _keep_failed(u, p.mail, type(error).__name__, text, "apply", attempts=attempts)
            return rid, kept

    # ------------------------------------------------------------------------------------------
    def _record(
        self,
        u: Unit,
        record_id: int,
        cmd: ReceiveMail,
        outcome: str,
        rule: str,
        ticket_id: int | None,
        **detail: object,
    ) -> None:
        if cmd.defects:
            # What the parser could not read stays on the record (nothing dropped silently).
            detail["defects"] = [_clean(d) for d in cmd.defects[:50]]
        self._batch.outcomes.append(
            queue.Outcome(
                record_id,
                outcome,
                rule,
                ticket_id,
                dict(detail),
                u.now,
                had_refs=record_id in self._batch.refs_of_queued,
            )
        )

    def _refuse(self, u: Unit, record_id: int, cmd: ReceiveMail, rule: str) -> IntakeResult:
        self._record(u, record_id, cmd, "refused", rule, None)
        return IntakeResult("refused", rule)

    def apply(
        self,
        u: Unit,
        cmd: ReceiveMail,
        record_id: int,
        *,
        arrived: datetime | None = None,
        released: bool = False,
    ) -> IntakeResult:
        """Decide and write one mail of the batch `_process` applies (no commit here); its
        outcome is written with the batch's."""
        # SPEC §2.5: automatic mail is recognised before the sender check and kept, never answered.
        q = cmd.quarantine
        if q is not None:
            self._record(
                u,
                record_id,
                cmd,
                "quarantined",
                f"quarantined: {q.reason}",
                None,
                kind=q.kind,
                bounced=list(q.bounced_recipients),
            )
            # A delay warning is kept in quarantine but fails no delivery: the MTA still tries.
            if q.kind == "bounce" and not q.temporary:
                self._bounce(u, cmd)
            return IntakeResult("quarantined", f"quarantined: {q.reason}")
        if cmd.from_email is None:
            return self._refuse(u, record_id, cmd, "refused: From header missing or malformed")
        sender = u.d.employee(cmd.from_email)
        if sender is None or not sender.active:
            why = "not an employee" if sender is None else "deactivated"
            return self._refuse(u, record_id, cmd, f"refused: sender {why}")
        org = u.d.get(m.Organization, sender.org_id)
        assert org is not None
        sender_domain = cmd.from_email.rsplit("@", 1)[-1]
        if (
            cmd.dmarc == "fail"
            and sender_domain in [d.lower() for d in org.domains]
            and self.options.refuse_dmarc_fail
        ):
            return self._refuse(
                u, record_id, cmd, "refused: DMARC failed for the organization's own domain"
            )
        trusted = cmd.dmarc in (None, "pass")
        # Flood guards: a sender's mails that arrived within the minute (burst) and the hour
        # before this one arrived, counted whatever became of them, up to the limit. Over a
        # limit the mail is quarantined (the sender got 250 and hears nothing); a mail an
        # operator released from quarantine (`quarantine release ID`) is not held again.
        limits = (
            (self.options.sender_burst_per_minute, timedelta(minutes=1), "a minute"),
            (self.options.sender_rate_per_hour, timedelta(hours=1), "an hour"),
        )
        if not released:
            since = arrived or u.now
            counts = queue.sender_mails_since(
                u.s,
                sender=cmd.from_email,
                before_id=record_id,
                windows=tuple((since - window, limit) for limit, window, _ in limits),  # type: ignore[arg-type]
            )
            for (limit, _, per), recent in zip(limits, counts, strict=True):
                if recent >= limit:
                    rule = f"quarantined: rate limit ({limit} mails {per} from one sender)"
                    self._record(u, record_id, cmd, "quarantined", rule, None, kind="rate_limit")
                    return IntakeResult("quarantined", rule)
        me = Party(PartyKind.EMPLOYEE, sender.id, sender.org_id)

        rated = self._feedback_ticket(u, cmd, sender)
        if rated is not None:
            return self._feedback(u, record_id, cmd, sender, rated)
        ticket, rule = self._thread(u, cmd, sender)
        if ticket is not None:
            return self._post(u, record_id, cmd, sender, ticket, rule, trusted)
        return self._raise(u, record_id, cmd, sender, me, rule, trusted)

    # ---- threading (SPEC §2.3): first rule that matches wins ------------------------------------
    def _thread(self, u: Unit, cmd: ReceiveMail, sender: m.Employee) -> tuple[m.Ticket | None, str]:
        ident = self.svc.identity
        tokens = self.svc.tokens
        if tokens is not None:
            for rcpt in cmd.envelope_rcpts + cmd.to + cmd.cc:
                tok = token_from_address(rcpt, local=ident.reply_local, domain=ident.domain)
                if tok is None:
                    continue
                claims = tokens.verify(tok, now=u.now)
                if claims is None or claims.purpose != "reply":
                    continue
                t = u.s.get(m.Ticket, claims.ticket_id, with_for_update=True)
                if t is not None and u.d.roles_of(t, sender):
                    return t, "threaded by reply token"
        for mid in (*cmd.in_reply_to, *reversed(cmd.references)):
            tid = self._ticket_for_message_id(u, mid)
            if tid is None:
                continue
            t = u.s.get(m.Ticket, tid, with_for_update=True)
            if t is not None and u.d.roles_of(t, sender):
                how = "In-Reply-To" if mid in cmd.in_reply_to else "References"
                return t, f"threaded by {how} <{mid}>"
        for n in find_ticket_refs(cmd.subject):
            t = u.s.get(m.Ticket, n, with_for_update=True)
            # The hijack rule: a tag alone threads only a participant's mail.
            if t is not None and u.d.roles_of(t, sender):
                return t, f"threaded by subject tag [TKT-{n}]"
        return None, "new ticket: no rule matched"

    # ---- an answer to a feedback request (issue 13) -----------------------------------------------
    def _feedback_ticket(self, u: Unit, cmd: ReceiveMail, sender: m.Employee) -> m.Ticket | None:
        """The closed ticket whose feedback reply address this mail is sent to by the person
        it was issued to; None for every other mail (a reopened ticket threads as usual)."""
        tokens, ident = self.svc.tokens, self.svc.identity
        if tokens is None or cmd.feedback is None:
            return None
        for rcpt in cmd.envelope_rcpts + cmd.to + cmd.cc:
            tok = token_from_address(rcpt, local=ident.reply_local, domain=ident.domain)
            claims = tokens.verify(tok, now=u.now) if tok is not None else None
            if claims is None or claims.purpose != "feedback" or claims.participant_id != sender.id:
                continue
            t = u.s.get(m.Ticket, claims.ticket_id, with_for_update=True)
            if t is not None and Status(t.status) in TERMINAL:
                return t
        return None

    def _feedback(
        self, u: Unit, record_id: int, cmd: ReceiveMail, sender: m.Employee, t: m.Ticket
    ) -> IntakeResult:
        answer = cmd.feedback
        assert answer is not None
        if answer.rating is None:
            asked = feedback.unclear_in(u, t, sender, text=answer.comment, channel=cmd.channel)
            rule = "feedback answer without a clear rating" + (
                "; asked once more" if asked else "; already asked once"
            )
        else:
            done = feedback.record_in(
                u, t, sender, rating=answer.rating, comment=answer.comment, channel=cmd.channel
            )
            rule = f"feedback answer: rating {answer.rating}" + (
                f" (replaces {done.previous})" if done.previous and done.changed else ""
            )
        self._record(u, record_id, cmd, "message", rule, t.id)
        return IntakeResult("message", rule, f"TKT-{t.id}")

    def _ticket_for_message_id(self, u: Unit, mid: str) -> int | None:
        return queue.ticket_for_message_id(u.s, mid)

    # ---- a message on an existing ticket -------------------------------------------------------
    def _post(
        self,
        u: Unit,
        record_id: int,
        cmd: ReceiveMail,
        sender: m.Employee,
        t: m.Ticket,
        rule: str,
        trusted: bool,
    ) -> IntakeResult:
        roles = u.d.roles_of(t, sender)
        status = Status(t.status)
        if status in TERMINAL:
            window = self.svc.options.reopen_window
            if (
                Role.REQUESTER in roles
                and status is Status.CLOSED
                and t.closed_at is not None
                and u.now - t.closed_at <= window
            ):
                res = u.apply(t, sender, CommandSpec("reopen", raw="reopen by reply"), cmd.channel)
                rule += "; reopened within the reopen window"
                assert res.applied
            else:
                me = Party(PartyKind.EMPLOYEE, sender.id, sender.org_id)
                return self._raise(
                    u,
                    record_id,
                    cmd,
                    sender,
                    me,
                    f"new ticket: TKT-{t.id} is {t.status}; follow-up opened",
                    trusted,
                    linked=t.id,
                )
        results: list[CommandResult] = []
        status_changed = False
        for c in cmd.commands:
            if not trusted:
                results.append(
                    CommandResult(c.raw or c.action, False, "sender not authenticated (DMARC)")
                )
                continue
            before = t.status
            r = u.apply(t, sender, c, cmd.channel)
            results.append(r)
            status_changed |= r.applied and t.status != before
        text = cmd.text.strip()
        # One confirmation per mail: all applied → it rides on the sender's copy; any refused →
        # the refusal (RFC 3834 auto-replied) lists every command, applied or not.
        all_applied = all(r.applied for r in results)
        if text or cmd.attachments:
            try:
                u.post(
                    t,
                    sender,
                    text,
                    cmd.channel,
                    html=cmd.html,
                    message_id=cmd.message_id,
                    raw_sha256=cmd.raw_sha256,
                    attachments=cmd.attachments,
                    status_effect=not status_changed,
                    in_reply_to=cmd.message_id,
                    applied=tuple(results) if all_applied else (),
                )
            except UserFacingError as e:
                results.append(CommandResult("message", False, e.reason))
        elif results and all_applied:
            u.notify.enqueue(
                t,
                "status_change",
                actor=sender,
                only=frozenset({sender.id}),
                applied=tuple(results),
            )
        u.attachments_not_kept(t, sender, _not_kept(cmd), tell=not cmd.suppress_auto_reply)
        if any(not r.applied for r in results) and not cmd.suppress_auto_reply:
            reasons = "; ".join(f"{r.command}: {r.reason}" for r in results if not r.applied)
            u.notify.enqueue(
                t,
                "refusal",
                actor=sender,
                only=frozenset({sender.id}),
                applied=tuple(results),
                extra={"reason": reasons},
            )
        self._record(
            u,
            record_id,
            cmd,
            "message",
            rule,
            t.id,
            commands=[
                {"command": r.command, "applied": r.applied, "reason": r.reason} for r in results
            ],
        )
        return IntakeResult("message", rule, f"TKT-{t.id}", commands=tuple(results))

    # ---- a new ticket ----------------------------------------------------------------------------
    def _default_target(self, u: Unit, sender: m.Employee, linked: int | None) -> Party | None:
        old = u.s.get(m.Ticket, linked) if linked is not None else None
        if old is not None:
            # A follow-up to a closed ticket written to its reply address goes where the old one went.
            if old.assignment_type == "INDIVIDUAL" and old.to_employee_id is not None:
                return Party(PartyKind.EMPLOYEE, old.to_employee_id, old.org_id)
            return Party(PartyKind.DEPARTMENT, old.to_department_id, old.org_id)
        if self.svc.options.default_department:
            dd = u.d.department(self.svc.options.default_department)
            if dd is not None and dd[0].org_id == sender.org_id:
                return Party(PartyKind.DEPARTMENT, dd[0].id, dd[0].org_id)
        return None

    def _raise(
        self,
        u: Unit,
        record_id: int,
        cmd: ReceiveMail,
        sender: m.Employee,
        me: Party,
        rule: str,
        trusted: bool,
        linked: int | None = None,
    ) -> IntakeResult:
        visible = {a.lower() for a in cmd.to + cmd.cc}
        external: list[str] = []
        sub_address = ""

        def resolve(addrs: tuple[str, ...]) -> list[Party]:
            nonlocal sub_address
            out: list[Party] = []
            for a in addrs:
                r = u.d.resolve(a)
                if r is None or r.party.org_id != sender.org_id:
                    low = a.lower()
                    if (
                        low != sender.email
                        and low not in external
                        and not low.endswith("@" + self.svc.identity.domain)
                    ):
                        external.append(low)
                    continue
                if r.sub_address and not sub_address:
                    sub_address = r.sub_address
                out.append(r.party)
            return out

        to = resolve(cmd.to)
        cc = resolve(cmd.cc)
        env_only = resolve(tuple(a for a in cmd.envelope_rcpts if a.lower() not in visible))
        routing = route(to=to, cc=cc, envelope_only=env_only, default=None, sender=me)
        if routing.target is None:
            # Only now look up the fallback target (SPEC §2.2, last rule).
            default = self._default_target(u, sender, linked)
            routing = route(to=to, cc=cc, envelope_only=env_only, default=default, sender=me)
        if routing.target is None:
            return self._refuse(
                u,
                record_id,
                cmd,
                "refused: no department or colleague of the sender's organization addressed",
            )
        params = {c.action: c for c in cmd.commands if c.action in _RAISE_PARAMS}
        rest = [c for c in cmd.commands if c.action not in _RAISE_PARAMS]
        results: list[CommandResult] = []
        category = ""
        priority = ""
        if "category" in params:
            category = " ".join(params["category"].args) or params["category"].remark
        if "priority" in params:
            if trusted:
                priority = " ".join(params["priority"].args) or params["priority"].remark
            else:
                p = params["priority"]
                results.append(
                    CommandResult(p.raw or p.action, False, "sender not authenticated (DMARC)")
                )
        rc, rhc = list(routing.rc), list(routing.rhc)
        for kind, lst in (("cc", rc), ("bcc", rhc)):
            if kind in params:
                for a in params[kind].args:
                    r = u.d.resolve(a)
                    if r is None or r.party.org_id != sender.org_id:
                        c = params[kind]
                        results.append(
                            CommandResult(c.raw or c.action, False, f"{a} is not known here")
                        )
                    else:
                        lst.append(r.party)
        # A bad #category or #priority is refused and said so; it is not worth losing the ticket.
        if category and u.d.category(sender.org_id, category)[0] is None:
            results.append(
                CommandResult(params["category"].raw, False, f"unknown category {category!r}")
            )
            category = ""
        if priority and priority.lower() not in {p.value for p in Priority}:
            results.append(
                CommandResult(params["priority"].raw, False, f"unknown priority {priority!r}")
            )
            priority = ""
        t = u.raise_ticket(
            requester=sender,
            target=routing.target,
            rc=tuple(rc),
            rhc=tuple(rhc),
            subject=cmd.subject,
            body=cmd.text.strip(),
            channel=cmd.channel,
            category=category,
            sub_address=sub_address,
            priority=priority,
            device=cmd.device,
            html=cmd.html,
            message_id=cmd.message_id,
            raw_sha256=cmd.raw_sha256,
            attachments=cmd.attachments,
            external=tuple(external),
            linked_ticket_id=linked,
        )
        for c in params.values():
            label = c.raw or c.action
            if all(r.command != label for r in results):
                results.append(CommandResult(label, True))
        for c in rest:
            if not trusted:
                results.append(
                    CommandResult(c.raw or c.action, False, "sender not authenticated (DMARC)")
                )
                continue
            results.append(u.apply(t, sender, c, cmd.channel))
        notes = _not_kept(cmd)
        u.attachments_not_kept(t, sender, notes, tell=False)  # the acknowledgement says it
        u.notify_raised(
            t, sender, ack=not cmd.suppress_auto_reply, applied=tuple(results), not_kept=notes
        )
        self._record(
            u,
            record_id,
            cmd,
            "ticket",
            rule,
            t.id,
            commands=[
                {"command": r.command, "applied": r.applied, "reason": r.reason} for r in results
            ],
            external=external,
        )
        return IntakeResult("ticket", rule, f"TKT-{t.id}", commands=tuple(results))

    # ---- bounces ---------------------------------------------------------------------------------
    def _verp_rows(self, u: Unit, cmd: ReceiveMail) -> list[m.Outbox]:
        tokens, ident = self.svc.tokens, self.svc.identity
        if tokens is None:
            return []
        found: list[m.Outbox] = []
        for rcpt in cmd.envelope_rcpts:
            tok = token_from_address(rcpt, local=ident.reply_local, domain=ident.domain)
            claims = tokens.verify(tok, now=u.now) if tok is not None else None
            if claims is None or claims.purpose != "bounce":
                continue
            row = u.s.get(m.Outbox, claims.participant_id)
            if row is not None and (row.ticket_id or 0) == claims.ticket_id:
                found.append(row)
        return found

    def _bounce(self, u: Unit, cmd: ReceiveMail) -> None:
        """A bounce naming one of our Message-IDs marks that delivery failed (SPEC §2.5)."""
        q = cmd.quarantine
        assert q is not None
        rows: dict[int, m.Outbox] = {}
        ids = set(q.original_message_ids) | set(cmd.references) | set(cmd.in_reply_to)
        for mid in sorted(ids):
            row = queue.outbox_row_with_message_id(u.s, mid)
            if row is not None:
                rows[row.id] = row
        # VERP: sent to the envelope sender of one mail, a bounce names it even when it quotes
        # nothing of the original (many MTAs and autoresponders quote nothing).
        for row in self._verp_rows(u, cmd):
            rows[row.id] = row
        for row in rows.values():
            row.state = "bounced"
            row.last_error = f"bounced: {', '.join(q.bounced_recipients) or row.recipient}"
            if row.ticket_id:
                t = u.s.get(m.Ticket, row.ticket_id)
                if t is not None:
                    u.history(
                        t,
                        "delivery_failed",
                        None,
                        Channel.SYSTEM,
                        f"mail to {row.recipient} bounced",
                    )
            sup = u.s.get(m.SuppressedAddress, row.recipient)
            if sup is None:
                sup = m.SuppressedAddress(address=row.recipient, hard_bounces=0, updated_at=u.now)
                u.s.add(sup)
            sup.hard_bounces += 1
            sup.suppressed = sup.hard_bounces >= 3
            sup.updated_at = u.now


def _not_kept(cmd: ReceiveMail) -> tuple[str, ...]:
    """One line per attachment of the mail that was not kept, for the ticket and the sender."""
    return tuple(_clean(d.note()) for d in cmd.dropped_attachments)


def _clean(text: str) -> str:
    """Text for a JSON record: no NUL or lone surrogate, which PostgreSQL's jsonb refuses."""
    return text[:500].encode("utf-8", "replace").decode("utf-8").replace("\x00", "")


def _keep_failed(
    u: Unit, mail: QueuedMail, kind: str, error: str, stage: str, **extra: object
) -> IntakeResult:
    """Poison mail: the queued mail leaves the queue into quarantine, with the error, the stage
    that raised (`parse` or `apply`) and its envelope recipients."""
    rule = f"quarantined: processing error ({kind})"
    detail = {
        "kind": "processing_error",
        "error": error,
        "stage": stage,
        **extra,
        "envelope_rcpts": list(mail.envelope_rcpts),
    }
    queue.finish(
        u.s,
        mail.record_id,
        outcome="quarantined",
        rule=rule,
        ticket_id=None,
        detail=detail,
        now=u.now,
    )
    return IntakeResult("quarantined", rule)
