"""Signed reply tokens: an unforgeable, revocable capability bound to (ticket, person, purpose)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

# Layout (after the Gitea reply token, services/mailer/token/token.go, SPEC §2.3 rule 1):
#   version (1) ‖ key id (1) ‖ ticket id (varint) ‖ participant id (varint) ‖ purpose (1)
#   ‖ expiry day (3, big-endian days since 1970-01-01 UTC) ‖ HMAC-SHA256(key, all before)[:10]
# encoded as lowercase base32 without padding. The tag is 80 bits (RFC 2104 §5 allows
# truncation to no less than half the hash length only with care; 80 bits is Gitea's choice
# and far beyond what an online guesser can try against an SMTP RCPT check).
# "bounce" tokens are VERP envelope senders: their participant field carries the outbox row
# id of the one mail they were sent with, so that a bounce names the failed delivery even when
# it quotes nothing of the original. New purposes are appended: the index is in the token.
PURPOSES = ("reply", "feedback", "bounce")

_VERSION = 1
_TAG_BYTES = 10
_EXPIRY_BYTES = 3
_MAX_ID = (1 << 63) - 1
_EPOCH = date(1970, 1, 1)
# RFC 5321 §4.5.3.1.1: a local part is at most 64 octets; "reply+" takes 6 of them.
MAX_TOKEN_CHARS = 64 - len("reply+")


@dataclass(frozen=True)
class TokenClaims:
    """What a verified token says: who may answer on which ticket, for what, until when."""

    ticket_id: int
    participant_id: int  # employee id
    purpose: str
    expires_day: int  # days since epoch (UTC); the token is valid through that whole day
    key_id: int


def _key_id(secret: bytes) -> int:
    return hashlib.sha256(secret).digest()[0]


def _day(now: datetime) -> int:
    # A naive time is taken as UTC, like the rest of the store does.
    moment = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
    return (moment.date() - _EPOCH).days


def _varint(n: int) -> bytes:
    # Unsigned LEB128: small ids (the common case) cost one or two bytes.
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int] | None:
    """Decode one canonical varint at ``pos``; None when truncated, too long or non-minimal."""
    value = 0
    for shift in range(0, 63, 7):
        if pos >= len(data):
            return None
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and shift:  # a trailing zero group is a non-minimal encoding
                return None
            return (value, pos) if value <= _MAX_ID else None
    return None


def _b32encode(raw: bytes) -> str:
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def _b32decode(token: str) -> bytes | None:
    text = token.strip().lower()
    if not text or not text.isascii() or len(text) > MAX_TOKEN_CHARS:
        return None
    if len(text) % 8 in (1, 3, 6):  # lengths no byte string encodes to (RFC 4648 §6)
        return None
    try:
        raw = base64.b32decode(text.upper() + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError):
        return None
    # Unused trailing bits must be zero, so each token has exactly one spelling (up to case).
    if _b32encode(raw) != text:
        return None
    return raw


class ReplyTokens:
    """Issue and verify reply tokens with the current secret; older secrets still verify."""

    def __init__(
        self, secret: str, previous_secrets: Sequence[str] = (), *, lifetime_days: int = 365
    ) -> None:
        if not secret:
            raise ValueError("the reply token secret must not be empty")
        if lifetime_days < 1:
            raise ValueError("lifetime_days must be at least 1")
        self._secret = secret.encode("utf-8")
        self._key_id = _key_id(self._secret)
        # Rotation: tokens made with a secret that is in neither list no longer verify.
        self._keys: tuple[bytes, ...] = (self._secret,) + tuple(
            s.encode("utf-8") for s in previous_secrets if s
        )
        self._lifetime_days = lifetime_days

    def issue(self, *, ticket_id: int, participant_id: int, purpose: str, now: datetime) -> str:
        """Return a lowercase token valid for ``lifetime_days`` from ``now``."""
        if not 0 <= ticket_id <= _MAX_ID or not 0 <= participant_id <= _MAX_ID:
            raise ValueError("ticket and participant ids must be in 0 .. 2**63-1")
        if purpose not in PURPOSES:
            raise ValueError(f"unknown token purpose {purpose!r}")
        expires = _day(now) + self._lifetime_days
        if expires >= 1 << (8 * _EXPIRY_BYTES):
            raise ValueError("expiry day does not fit the token")
        body = (
            bytes((_VERSION, self._key_id))
            + _varint(ticket_id)
            + _varint(participant_id)
            + bytes((PURPOSES.index(purpose),))
            + expires.to_bytes(_EXPIRY_BYTES, "big")
        )
        return _b32encode(body + self._tag(self._secret, body))

    def verify(self, token: str, *, now: datetime) -> TokenClaims | None:
        """The claims of a genuine, unexpired token; None for anything else."""
        raw = _b32decode(token)
        if raw is None or len(raw) < 2 + 2 + 1 + _EXPIRY_BYTES + _TAG_BYTES:
            return None
        body, tag = raw[:-_TAG_BYTES], raw[-_TAG_BYTES:]
        if body[0] != _VERSION:
            return None
        key_id = body[1]
        # Two secrets may share a key id byte (1 in 256): try each candidate in turn.
        candidates = [k for k in self._keys if _key_id(k) == key_id]
        if not any(hmac.compare_digest(self._tag(k, body), tag) for k in candidates):
            return None
        claims = self._parse(body)
        if claims is None or claims.expires_day < _day(now):
            return None
        return claims

    @staticmethod
    def _tag(key: bytes, body: bytes) -> bytes:
        return hmac.new(key, body, hashlib.sha256).digest()[:_TAG_BYTES]

    @staticmethod
    def _parse(body: bytes) -> TokenClaims | None:
        ticket = _read_varint(body, 2)
        if ticket is None:
            return None
        participant = _read_varint(body, ticket[1])
        if participant is None:
            return None
        pos = participant[1]
        if len(body) != pos + 1 + _EXPIRY_BYTES or body[pos] >= len(PURPOSES):
            return None
        return TokenClaims(
            ticket_id=ticket[0],
            participant_id=participant[0],
            purpose=PURPOSES[body[pos]],
            expires_day=int.from_bytes(body[pos + 1 :], "big"),
            key_id=body[1],
        )


def reply_address(local: str, token: str, domain: str) -> str:
    """The signed reply address ``<local>+<token>@<domain>`` (RFC 5233 sub-addressing)."""
    return f"{local}+{token}@{domain}"


def token_from_address(addr: str, *, local: str, domain: str) -> str | None:
    """The token of a bare reply address (``a+t@d`` or ``<a+t@d>``); None when it is not one.

    Local part and domain match case-insensitively: some servers upper-case addresses.
    """
    text = addr.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    box, at, dom = text.rpartition("@")
    if not at or dom.casefold() != domain.casefold():
        return None
    base, plus, token = box.partition("+")
    if not plus or base.casefold() != local.casefold() or not token:
        return None
    return token.lower()
