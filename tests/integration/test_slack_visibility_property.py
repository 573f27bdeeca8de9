"""Property: whatever happens on a ticket, no hidden message and no hidden copy's name or
address ever reaches the department channel or its thread (posts and updates)."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Database, mail, poll_until
from tests.fake_slack import slack_gateway

PEOPLE = {
    "U0ALICE": "alice@acme.example",
    "U0BOB": "bob@acme.example",
    "U0KARL": "karl@acme.example",
    "U0MIA": "mia@acme.example",
    "U0LENA": "lena@acme.example",
    "U0NOAH": "noah@acme.example",
}
# (hidden copy's email, name) — none of them in IT, the target department
HIDDEN = [("lena@acme.example", "Lena Vogel"), ("mia@acme.example", "Mia Hoffmann")]

step = st.one_of(
    st.tuples(st.just("reply"), st.sampled_from(["U0ALICE", "U0BOB"])),
    st.tuples(st.just("hidden"), st.sampled_from(["U0LENA", "U0MIA"])),
    st.tuples(st.just("take"), st.sampled_from(["U0ALICE", "U0BOB"])),
    st.tuples(st.just("bcc"), st.sampled_from(["U0ALICE", "U0BOB"])),
    st.tuples(st.just("mail"), st.just("karl")),
)


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(steps=st.lists(step, min_size=2, max_size=6), by_mail=st.booleans())
def test_hidden_things_never_reach_the_channel(
    steps: list[tuple[str, str]], by_mail: bool, tmp_path_factory: object
) -> None:
    folder = Path(tmp_path_factory.mktemp("vis"))  # type: ignore[attr-defined]
    db = Database("sqlite", f"sqlite:///{folder}/tg.db")
    with slack_gateway(db, folder / "install") as sg:
        for uid, email in PEOPLE.items():
            sg.fake.add_user(uid, email)
        secrets: list[str] = []
        if by_mail:
            msg = mail("karl@acme.example", ["it@acme.example"], "Screen", "It flickers")
            sg.gw.send(msg, "karl@acme.example", ["it@acme.example", "lena@tickets.acme.example"])
        else:
            sg.client.command("new IT: Screen", user="U0KARL")
        poll_until(lambda: len(sg.gw.tickets()) == 1, timeout=10, what="the ticket")
        ref = sg.gw.tickets()[0]["ref"]
        if by_mail:
            assert sg.gw.ticket(ref)["copies"]["rhc"] == ["lena@acme.example"]
        for i, (kind, who) in enumerate(steps):
            if kind == "reply":
                text = f"reply {ref} visible reply {i}"
            elif kind == "hidden":
                if PEOPLE[who] not in sg.gw.ticket(ref)["copies"]["rhc"]:
                    continue
                secrets.append(f"hidden secret {i}")
                text = f"message {ref} {secrets[-1]}"
            elif kind == "take":
                text = f"take {ref}"
            elif kind == "bcc":
                text = f"bcc {ref} {HIDDEN[i % 2][0]}"
            else:
                continue
            answered = sg.fake.count("chat.postEphemeral")
            sg.client.command(text, user=who)
            sg.wait("chat.postEphemeral", answered + 1)  # done or refused: applied or not
            sg.deliver()
        sg.deliver()
        channel = sg.fake.channel_text("C0ITSUPPORT")
        assert ref in channel
        for email, name in HIDDEN:
            if email in sg.gw.ticket(ref)["copies"]["rhc"]:
                assert email not in channel and name not in channel
                assert email.split("@")[0] not in channel.lower()
        for secret in secrets:
            assert secret not in channel
