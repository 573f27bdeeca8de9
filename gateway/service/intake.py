"""Inbound mail: dedupe, quarantine, sender check, threading (SPEC §2.3), raise or post — one transaction."""

from __future__ import annotations

import hashlib
import time
from datetime import timedelta

from sqlalchemy import Connection, bindparam, func, insert, select
from sqlalchemy.exc import IntegrityError

from gateway.domain.lifecycle import TERMINAL, Channel, Priority, Role, Status
from gateway.domain.routing import Party, PartyKind, route
from gateway.domain.subjects import find_ticket_refs
from gateway.domain.tokens import token_from_address
from gateway.service.commands import (
    CommandResult,
    CommandSpec,
    FailedMail,
    IntakeResult,
    ReceiveMail,
)
from gateway.service.directory import Directory
from gateway.service.errors import UserFacingError
from gateway.service.tickets import TicketService, Unit
from store import models as m
from store.db import read_session
from store.prepared import Prepared

# Processing records are written, and looked up by dedupe key, without the ORM's overhead
# (and prepared: store/prepared.py).
_INSERT_RECORD = Prepared(insert(m.InboundMail))
_PRIOR = Prepared(
    select(m.InboundMail.ticket_id, m.InboundMail.rule).where(
        m.InboundMail.dedupe_key == bindparam("key")
    )
)


def _prior(conn: Connection, key: str) -> tuple[int | None, str] | None:
    """The processing record of an earlier delivery of this mail: (ticket id, rule)."""
    rows = _PRIOR.rows(conn, {"key": key})
    return (rows[0][0], rows[0][1]) if rows else None


# Threading rule 2: a Message-ID we sent, one we received, or a ticket's root (in that order).
_BY_MESSAGE_ID = tuple(
    Prepared(q)
    for q in (
        select(m.Outbox.ticket_id).where(m.Outbox.message_id == bindparam("mid")).limit(1),
        select(m.Message.ticket_id).where(m.Message.message_id == bindparam("mid")).limit(1),
        select(m.Ticket.id).where(m.Ticket.root_message_id == bindparam("mid")).limit(1),
    )
)

# How long a recipient found at RCPT TO is taken as known without asking the database again.
RECIPIENT_TTL = 30.0

# Commands that are raise-time parameters when they arrive with a new ticket.
_RAISE_PARAMS = {"category", "priority", "cc", "bcc"}


class MailIntake:
    """Decides the fate of one inbound mail; the SMTP and IMAP adapters call `receive`."""

    def __init__(
        self,
        service: TicketService,
        *,
        sender_rate_per_hour: int = 120,
        refuse_dmarc_fail: bool = True,
    ) -> None:
        self.svc = service
        self.sender_rate_per_hour = sender_rate_per_hour
        self.refuse_dmarc_fail = refuse_dmarc_fail
        # Addresses RCPT TO found to be ours, with when: asked again within RECIPIENT_TTL they
        # cost no database read. Only "yes" is remembered: a 550 is final for the sending MTA,
        # so an address added by `org import` must be accepted at once; one removed is at
        # worst accepted for RECIPIENT_TTL and then routed (or refused) by the writer.
        self._known: dict[str, tuple[str, float]] = {}
        # The sender's mails of the last hour, counted up to the limit only (index on sender,
        # at): a flood costs no more per mail. Built once: statement building is not free.
        window = (
            select(m.InboundMail.id)
            .where(
                m.InboundMail.sender == bindparam("sender"),
                m.InboundMail.at >= bindparam("since"),
            )
            .limit(sender_rate_per_hour)
            .subquery()
        )
        self._recent = Prepared(select(func.count()).select_from(window))

    def remembered_recipient(self, addr: str) -> str | None:
        """RCPT TO where no database is needed: postmaster, our own address, a valid reply
        token, or an address found within RECIPIENT_TTL. None: ask `known_recipient`."""
        return self._without_database(addr.strip().lower())[1]

    def known_recipient(self, addr: str) -> str | None:
        """RCPT TO check: 'department' | 'employee' | 'reply' | 'postmaster' | None."""
        a = addr.strip().lower()
        decided, kind = self._without_database(a)
        if decided:
            return kind
        with read_session(self.svc.sessions) as s:
            d = Directory(s)
            kind = (
                "department"
                if d.department(a) is not None
                else "employee"
                if d.employee(a) is not None
                else None
            )
        if kind is not None:
            if len(self._known) >= 10_000:
                self._known.clear()
            self._known[a] = (kind, time.monotonic())
        return kind

    def _without_database(self, a: str) -> tuple[bool, str | None]:
        """(decided, kind) for a lower-cased address; not decided: the directory must say."""
        ident = self.svc.identity
        if a.split("@")[0] == "postmaster":
            return True, "postmaster"
        tok = token_from_address(a, local=ident.reply_local, domain=ident.domain)
        if tok is not None:  # a reply address is decided by its token alone
            valid = self.svc.tokens is not None and self.svc.tokens.verify(tok, now=self.svc.now())
            return True, "reply" if valid else None
        if a == ident.from_address:
            return True, "reply"
        known = self._known.get(a)
        if known is not None and time.monotonic() - known[1] < RECIPIENT_TTL:
            return True, known[0]
        return False, None

    def receive(self, cmd: ReceiveMail) -> IntakeResult:
        try:
            with self.svc.unit() as u:
                return self.apply(u, cmd)
        except IntegrityError:
            # Two deliveries of one message raced; the other one committed it first.
            with read_session(self.svc.sessions) as s:
                rec = _prior(s.connection(), cmd.dedupe_key)
            if rec is None:
                raise
            return IntakeResult("duplicate", f"duplicate of an accepted mail: {rec[1]}")

    def quarantine_failed(self, failed: FailedMail) -> IntakeResult:
        """Poison mail: parsing or applying it raised (a bug, or input nobody foresaw). It is
        kept in quarantine with the error, in a transaction of its own, and accepted: a 451
        would have the MTA retry the same failure for days and then bounce it. A re-delivery
        is a duplicate of the quarantined record. Storage errors are not poison: they raise."""
        raw, error, cmd = failed.raw, failed.error, failed.cmd
        sha = cmd.raw_sha256 if cmd is not None else hashlib.sha256(raw).hexdigest()
        key = cmd.dedupe_key if cmd is not None else "raw:" + sha
        error_text = f"{type(error).__name__}: {error}"[:500]
        error_text = error_text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "")
        rule = f"quarantined: processing error ({type(error).__name__})"
        with self.svc.unit() as u:
            prior = _prior(u.conn, key)
            if prior is not None:
                return IntakeResult("duplicate", f"duplicate of an accepted mail: {prior[1]}")
            u.store_blob(sha, raw)
            u.s.add(
                m.InboundMail(
                    dedupe_key=key,
                    message_id=cmd.message_id if cmd is not None else None,
                    sender=(cmd.from_email if cmd is not None else None) or failed.envelope_from,
                    channel=(cmd.channel if cmd is not None else Channel.EMAIL).value,
                    outcome="quarantined",
                    rule=rule,
                    ticket_id=None,
                    raw_sha256=sha,
                    at=u.now,
                    detail={
                        "kind": "processing_error",
                        "error": error_text,
                        "stage": "apply" if cmd is not None else "parse",
                        "envelope_rcpts": list(failed.envelope_rcpts),
                    },
                )
            )
        return IntakeResult("quarantined", rule)

    # ------------------------------------------------------------------------------------------
    def _record(
        self,
        u: Unit,
        cmd: ReceiveMail,
        outcome: str,
        rule: str,
        ticket_id: int | None,
        **detail: object,
    ) -> None:
        u.store_blob(cmd.raw_sha256, cmd.raw)
        if cmd.defects:
            # What the parser could not read stays on the record (nothing dropped silently);
            # no NUL or lone surrogate, which PostgreSQL's jsonb refuses.
            detail["defects"] = [
                d.encode("utf-8", "replace").decode("utf-8").replace("\x00", "")
                for d in cmd.defects[:50]
            ]
        _INSERT_RECORD(
            u.conn,
            {
                "dedupe_key": cmd.dedupe_key,
                "message_id": cmd.message_id,
                "sender": cmd.from_email or cmd.envelope_from or "",
                "channel": cmd.channel.value,
                "outcome": outcome,
                "rule": rule,
                "ticket_id": ticket_id,
                "raw_sha256": cmd.raw_sha256,
                "at": u.now,
                "detail": dict(detail),
            },
        )

    def apply(self, u: Unit, cmd: ReceiveMail) -> IntakeResult:
        """Decide and write one mail inside the caller's unit of work (no commit here)."""
        prior = _prior(u.conn, cmd.dedupe_key)
        if prior is not None:
            ref = f"TKT-{prior[0]}" if prior[0] else None
            return IntakeResult("duplicate", f"duplicate of an accepted mail: {prior[1]}", ref)
        # SPEC §2.5: automatic mail is recognised before the sender check and kept, never answered.
        q = cmd.quarantine
        if q is not None:
            self._record(
                u,
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
            return IntakeResult(
                "refused",
                "refused: From header missing or malformed",
                code=550,
                text="5.7.1 From header missing or malformed",
            )
        sender = u.d.employee(cmd.from_email)
        if sender is None or not sender.active:
            why = "not an employee" if sender is None else "deactivated"
            return IntakeResult(
                "refused",
                f"refused: sender {why}",
                code=550,
                text=f"5.7.1 {cmd.from_email} is {why} of an organization served here",
            )
        org = u.d.get(m.Organization, sender.org_id)
        assert org is not None
        sender_domain = cmd.from_email.rsplit("@", 1)[-1]
        if (
            cmd.dmarc == "fail"
            and sender_domain in [d.lower() for d in org.domains]
            and self.refuse_dmarc_fail
        ):
            return IntakeResult(
                "refused",
                "refused: DMARC failed for the organization's own domain",
                code=550,
                text="5.7.1 DMARC check failed for your domain; message not accepted",
            )
        trusted = cmd.dmarc in (None, "pass")
        since = u.now - timedelta(hours=1)
        recent = int(self._recent(u.conn, {"sender": cmd.from_email, "since": since}))
        if recent >= self.sender_rate_per_hour:
            rule = f"quarantined: rate limit ({self.sender_rate_per_hour} mails an hour from one sender)"
            self._record(u, cmd, "quarantined", rule, None, kind="rate_limit")
            return IntakeResult("quarantined", rule)
        me = Party(PartyKind.EMPLOYEE, sender.id, sender.org_id)

        ticket, rule = self._thread(u, cmd, sender)
        if ticket is not None:
            return self._post(u, cmd, sender, ticket, rule, trusted)
        return self._raise(u, cmd, sender, me, rule, trusted)

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

    def _ticket_for_message_id(self, u: Unit, mid: str) -> int | None:
        conn = u.conn
        for query in _BY_MESSAGE_ID:
            found = query(conn, {"mid": mid})
            if found is not None:
                return int(found)
        return None

    # ---- a message on an existing ticket -------------------------------------------------------
    def _post(
        self, u: Unit, cmd: ReceiveMail, sender: m.Employee, t: m.Ticket, rule: str, trusted: bool
    ) -> IntakeResult:
        u.store_blob(cmd.raw_sha256, cmd.raw)
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
            return IntakeResult(
                "refused",
                "refused: no department or colleague of the sender's organization addressed",
                code=550,
                text="5.1.1 no department or colleague of your organization was addressed",
            )
        u.store_blob(cmd.raw_sha256, cmd.raw)
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
        u.notify_raised(t, sender, ack=not cmd.suppress_auto_reply, applied=tuple(results))
        self._record(
            u,
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
            row = u.s.scalars(select(m.Outbox).where(m.Outbox.message_id == mid)).first()
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
