"""Property (SPEC §1.4, §2.6): no mail to someone outside the assignee side and the hidden copies
ever names a hidden copy or carries hidden text, whoever writes what, by mail or CLI."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import getaddresses

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from gateway.service.commands import Act
from store import models as m
from tests.conftest import Gateway, mail

GATEWAY_DOMAIN = "tickets.acme.example"
DEPARTMENTS: dict[str, tuple[str, ...]] = {  # active members of the demo org
    "it@acme.example": ("alice@acme.example", "bob@acme.example", "carol@acme.example"),
    "facilities@acme.example": ("dieter@acme.example", "eva@acme.example"),
    "engineering@acme.example": ("karl@acme.example", "lena@acme.example", "mia@acme.example"),
    "hr@acme.example": ("frank@acme.example", "grace@acme.example"),
    "finance@acme.example": ("henry@acme.example", "irene@acme.example", "james@acme.example"),
    "sales@acme.example": ("nora@acme.example", "paula@acme.example"),
}
NAMES = {
    "alice": "Alice Adams",
    "bob": "Bob Becker",
    "carol": "Carol Schmidt",
    "dieter": "Dieter Fischer",
    "eva": "Eva Wagner",
    "karl": "Karl Braun",
    "lena": "Lena Vogel",
    "mia": "Mia Hoffmann",
    "frank": "Frank Miller",
    "grace": "Grace Lee",
    "henry": "Henry Ortiz",
    "irene": "Irene Chen",
    "james": "James Walker",
    "nora": "Nora Davis",
    "paula": "Paula Garcia",
}
ROLES = ("requester", "assignee", "rc", "rhc")


@dataclass(frozen=True)
class Case:
    """One ticket: who raises it to whom, who is copied openly and who hidden, then who writes."""

    requester: str
    department: str  # the target department's address
    individual: str | None  # the target employee, for an INDIVIDUAL ticket
    rc: tuple[str, ...]
    rhc: tuple[str, ...]
    steps: tuple[tuple[str, int, bool], ...]  # (role, which member, by mail?)

    @property
    def assignee_side(self) -> tuple[str, ...]:
        return (self.individual,) if self.individual else DEPARTMENTS[self.department]

    def author(self, role: str, pick: int) -> tuple[str, str]:
        """Who writes for `role` (the requester when nobody holds it), and the role they write in."""
        pool = {
            "requester": (self.requester,),
            "assignee": self.assignee_side,
            "rc": self.rc,
            "rhc": self.rhc,
        }
        members = pool[role]
        if not members:
            return self.requester, "requester"
        return members[pick % len(members)], role


@st.composite
def cases(draw: st.DrawFn) -> Case:
    department = draw(st.sampled_from(sorted(DEPARTMENTS)))
    members = DEPARTMENTS[department]
    individual = draw(st.one_of(st.none(), st.sampled_from(members)))
    # Copies and the requester come from other departments, so nobody holds two kinds of role.
    outside = sorted(e for d, ms in DEPARTMENTS.items() if d != department for e in ms)
    requester = draw(st.sampled_from(outside))
    others = [e for e in outside if e != requester]
    rc = draw(st.lists(st.sampled_from(others), max_size=2, unique=True))
    rhc = draw(
        st.lists(
            st.sampled_from([e for e in others if e not in rc]), min_size=1, max_size=2, unique=True
        )
    )
    steps = draw(
        st.lists(
            st.tuples(st.sampled_from(ROLES), st.integers(0, 2), st.booleans()),
            min_size=1,
            max_size=4,
        )
    )
    return Case(requester, department, individual, tuple(rc), tuple(rhc), tuple(steps))


def gateway_address(email: str) -> str:
    return email.split("@")[0] + "@" + GATEWAY_DOMAIN


def everything_in(x: EmailMessage, raw: bytes) -> str:
    """Every header (decoded) and every part (decoded), plus the raw bytes, lower-cased."""
    parts = [f"{k}: {v}" for k, v in x.items()]
    for part in x.walk():
        if not part.is_multipart():
            content = part.get_content()
            parts.append(
                content if isinstance(content, str) else content.decode("utf-8", "replace")
            )
    parts.append(raw.decode("utf-8", "replace"))
    return "\n".join(parts).lower()


class Mailbox:
    """The maildir seen so far: each call delivers what is due and returns only the new mail."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.seen: set[str] = set()
        self.latest: dict[tuple[str, str], EmailMessage] = {}  # (ref, recipient) → last notice

    def deliver(self, ref: str) -> list[tuple[str, EmailMessage, bytes]]:
        self.gw.worker.run_once()  # type: ignore[attr-defined]
        new = self.gw.env.dir / "outbox" / "new"
        out = []
        for p in sorted(new.iterdir(), key=lambda p: p.stat().st_mtime_ns):
            if p.name in self.seen:
                continue
            self.seen.add(p.name)
            raw = p.read_bytes()
            x = message_from_bytes(raw, policy=policy.default)
            assert isinstance(x, EmailMessage)
            to = str(x["Delivered-To"]).strip().lower()
            if f"[{ref}]" in str(x["Subject"]):
                self.latest[(ref, to)] = x
            out.append((to, x, raw))
        return out


def newest_ticket(gw: Gateway) -> m.Ticket:
    with gw.env.app.sessions() as s:
        t = s.get(m.Ticket, s.scalar(select(func.max(m.Ticket.id))))
        assert t is not None
        return t


def write(
    gw: Gateway,
    box: Mailbox,
    case: Case,
    ref: str,
    author: str,
    role: str,
    by_mail: bool,
    text: str,
) -> None:
    """`author` writes `text`: by mail, answering their last notice with it quoted; or by CLI."""
    if by_mail and (ref, author) in box.latest:
        notice = box.latest[(ref, author)]
        to = getaddresses([str(notice["Reply-To"])])[0][1]
        quoted = "\n".join(
            "> " + line for line in notice.get_body(("plain",)).get_content().splitlines()
        )
        body = f"{text}\n\nOn Mon, 2 Nov 2026 at 09:00, Helpdesk wrote:\n{quoted}\n"
        r = mail(author, [to], "Re: " + str(notice["Subject"]), body)
        r["In-Reply-To"] = str(notice["Message-ID"])
        assert gw.send(r, author, [to])[0] == 250
        return
    status = newest_ticket(gw).status
    if role == "assignee":
        action = "reply"
    elif role == "requester" and status in ("REPLIED", "RETURNED"):
        action = "respond"
    else:
        action = "message"
    gw.env.service.act(Act(ref, author, action, body=text))


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=cases())
def test_hidden_copies_and_hidden_text_stay_hidden(gateway: Gateway, case: Case) -> None:
    """Only the assignee side and RHC members ever see an RHC member's address, name or words."""
    gw = gateway
    box = getattr(gw, "_box", None) or Mailbox(gw)
    gw._box = box  # type: ignore[attr-defined]
    gw.env.clock.advance(days=1)  # a fresh day: the per-address cap on automatic mail never bites
    tag = uuid.uuid4().hex[:8]
    to = case.individual or case.department
    rcpts = [to, *case.rc, *(gateway_address(e) for e in case.rhc)]
    m1 = mail(case.requester, [to], f"Case {tag}", f"RAISE-{tag} please help", cc=list(case.rc))
    assert gw.send(m1, case.requester, rcpts)[0] == 250
    ref = f"TKT-{newest_ticket(gw).id}"
    t = gw.ticket(ref)
    assert sorted(t["copies"]["rhc"]) == sorted(case.rhc) and sorted(t["copies"]["rc"]) == sorted(
        case.rc
    )
    mails = box.deliver(ref)
    hidden: list[str] = []
    for i, (role, pick, by_mail) in enumerate(case.steps):
        author, role = case.author(role, pick)
        marker = f"MARK-{tag}-{i}-{role}"
        if author in case.rhc:
            hidden.append(marker)
        write(gw, box, case, ref, author, role, by_mail, marker)
        mails += box.deliver(ref)

    privileged = set(case.assignee_side) | set(case.rhc)
    forbidden = [s.lower() for s in hidden]
    for e in case.rhc:
        forbidden += [e, gateway_address(e), NAMES[e.split("@")[0]].lower()]
    for rcpt, x, raw in mails:
        if rcpt in privileged:
            continue
        text = everything_in(x, raw)
        leaked = [s for s in forbidden if s in text]
        assert not leaked, f"{rcpt} got {leaked} in {x['Subject']}"

    # Not vacuous: what was written got stored, and each hidden text reached the assignee side.
    bodies = [msg["body"] for msg in gw.ticket(ref)["messages"]]
    assert all(any(f"MARK-{tag}-{i}-" in b for b in bodies) for i in range(len(case.steps)))
    for marker in hidden:
        assert any(
            marker.lower() in everything_in(x, raw)
            for r, x, raw in mails
            if r in case.assignee_side
        )
