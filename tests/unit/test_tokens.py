"""Reply tokens: round trip, tamper, other ticket, expiry, rotation, case and length."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.tokens import (
    PURPOSES,
    ReplyTokens,
    TokenClaims,
    reply_address,
    token_from_address,
)

NOW = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
SECRET = "s3cret-installation-key"
ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"


@pytest.fixture
def tokens() -> ReplyTokens:
    return ReplyTokens(SECRET)


def test_round_trip(tokens: ReplyTokens) -> None:
    """A fresh token verifies and gives back exactly what was signed."""
    token = tokens.issue(ticket_id=7, participant_id=42, purpose="reply", now=NOW)
    claims = tokens.verify(token, now=NOW)
    assert isinstance(claims, TokenClaims)
    assert (claims.ticket_id, claims.participant_id, claims.purpose) == (7, 42, "reply")
    assert claims.expires_day == (NOW.date() - datetime(1970, 1, 1).date()).days + 365
    assert token == token.lower() and token.isalnum()


@pytest.mark.parametrize("purpose", PURPOSES)
@pytest.mark.parametrize(
    "ids", [(0, 0), (1, 1), (127, 128), (2**31, 2**40), (2**63 - 1, 2**63 - 1)]
)
def test_round_trip_all_sizes(tokens: ReplyTokens, purpose: str, ids: tuple[int, int]) -> None:
    """Small and huge ids and every purpose survive the encoding."""
    token = tokens.issue(ticket_id=ids[0], participant_id=ids[1], purpose=purpose, now=NOW)
    claims = tokens.verify(token, now=NOW)
    assert claims is not None
    assert (claims.ticket_id, claims.participant_id, claims.purpose) == (*ids, purpose)


def test_fits_a_local_part(tokens: ReplyTokens) -> None:
    """Even the largest ids fit RFC 5321's 64-octet local part behind "reply+"."""
    token = tokens.issue(ticket_id=2**63 - 1, participant_id=2**63 - 1, purpose="feedback", now=NOW)
    assert len("reply+" + token) <= 64
    small = tokens.issue(ticket_id=7, participant_id=42, purpose="reply", now=NOW)
    assert len(small) <= 32


def test_every_single_character_flip_is_refused(tokens: ReplyTokens) -> None:
    """Changing any one character of a token, to any other letter, makes it invalid."""
    token = tokens.issue(ticket_id=1234, participant_id=99, purpose="reply", now=NOW)
    for i, original in enumerate(token):
        for c in ALPHABET:
            if c != original:
                assert tokens.verify(token[:i] + c + token[i + 1 :], now=NOW) is None


def test_other_ticket_never_verifies_as_this_one(tokens: ReplyTokens) -> None:
    """A token for ticket A says ticket A: it cannot be read as ticket B or another person."""

    def claims(ticket: int, person: int) -> TokenClaims | None:
        token = tokens.issue(ticket_id=ticket, participant_id=person, purpose="reply", now=NOW)
        return tokens.verify(token, now=NOW)

    a, b, c = claims(1, 5), claims(2, 5), claims(1, 6)
    assert a is not None and b is not None and c is not None
    assert a.ticket_id == 1 and b.ticket_id == 2 and a != b
    assert a.participant_id == 5 and c.participant_id == 6


def test_expired_token_is_refused() -> None:
    """A token is good through its expiry day and refused the day after."""
    tokens = ReplyTokens(SECRET, lifetime_days=3)
    token = tokens.issue(ticket_id=1, participant_id=2, purpose="feedback", now=NOW)
    last_day = NOW.replace(hour=23, minute=59) + timedelta(days=3)
    assert tokens.verify(token, now=last_day) is not None
    assert tokens.verify(token, now=last_day + timedelta(minutes=2)) is None


def test_rotation_keeps_old_tokens_only_while_listed() -> None:
    """After a key change, old tokens verify while the old secret is in previous_secrets."""
    old = ReplyTokens("old-secret")
    token = old.issue(ticket_id=3, participant_id=4, purpose="reply", now=NOW)
    grace = ReplyTokens("new-secret", previous_secrets=["old-secret"])
    claims = grace.verify(token, now=NOW)
    assert claims is not None and claims.ticket_id == 3
    assert ReplyTokens("new-secret").verify(token, now=NOW) is None
    fresh = grace.issue(ticket_id=3, participant_id=4, purpose="reply", now=NOW)
    assert old.verify(fresh, now=NOW) is None  # new tokens are made with the new secret


def test_upper_cased_token_still_verifies(tokens: ReplyTokens) -> None:
    """Servers that upper-case addresses do not break replies."""
    token = tokens.issue(ticket_id=9, participant_id=1, purpose="reply", now=NOW)
    assert tokens.verify(token.upper(), now=NOW) == tokens.verify(token, now=NOW)


@pytest.mark.parametrize("junk", ["", "a", "!!!!", "é" * 20, "a" * 200, "aaaaaaa", "a" * 32])
def test_malformed_input_is_refused(tokens: ReplyTokens, junk: str) -> None:
    """Garbage of any shape is refused, never an exception."""
    assert tokens.verify(junk, now=NOW) is None


def test_issue_rejects_bad_arguments(tokens: ReplyTokens) -> None:
    """Unknown purposes, negative or oversized ids and an empty secret are programming errors."""
    with pytest.raises(ValueError):
        tokens.issue(ticket_id=1, participant_id=1, purpose="admin", now=NOW)
    with pytest.raises(ValueError):
        tokens.issue(ticket_id=-1, participant_id=1, purpose="reply", now=NOW)
    with pytest.raises(ValueError):
        tokens.issue(ticket_id=2**63, participant_id=1, purpose="reply", now=NOW)
    with pytest.raises(ValueError):
        ReplyTokens("")


def test_reply_address_round_trip(tokens: ReplyTokens) -> None:
    """The token comes back out of its address, whatever the case of local part and domain."""
    token = tokens.issue(ticket_id=7, participant_id=1, purpose="reply", now=NOW)
    addr = reply_address("reply", token, "tickets.acme.example")
    assert addr == f"reply+{token}@tickets.acme.example"
    found = token_from_address(addr.upper(), local="reply", domain="tickets.acme.example")
    assert found == token
    assert token_from_address(f"<{addr}>", local="Reply", domain="TICKETS.acme.example") == token


@pytest.mark.parametrize(
    "addr",
    [
        "reply@tickets.acme.example",
        "reply+@tickets.acme.example",
        "other+abc@tickets.acme.example",
        "reply+abc@acme.example",
        "reply+abc@evil.example",
        "replyabc@tickets.acme.example",
        "reply+abc",
    ],
)
def test_token_from_other_addresses_is_none(addr: str) -> None:
    """Addresses that are not our reply addresses yield no token."""
    assert token_from_address(addr, local="reply", domain="tickets.acme.example") is None


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    edits=st.lists(
        st.tuples(st.sampled_from(["replace", "insert", "delete"]), st.integers(0, 63)),
        min_size=1,
        max_size=4,
    ),
)
def test_random_mutations_never_verify(data: st.DataObject, edits: list[tuple[str, int]]) -> None:
    """Any edit that changes the token (beyond its letter case) makes it invalid."""
    tokens = ReplyTokens(SECRET)
    token = tokens.issue(ticket_id=31337, participant_id=271, purpose="reply", now=NOW)
    mutated = token
    for op, pos in edits:
        i = pos % (len(mutated) + 1)
        char = data.draw(st.sampled_from(ALPHABET + "ABCXYZ019=-"))
        if op == "replace" and i < len(mutated):
            mutated = mutated[:i] + char + mutated[i + 1 :]
        elif op == "insert":
            mutated = mutated[:i] + char + mutated[i:]
        elif op == "delete" and i < len(mutated):
            mutated = mutated[:i] + mutated[i + 1 :]
    if mutated.lower() != token:
        assert tokens.verify(mutated, now=NOW) is None
