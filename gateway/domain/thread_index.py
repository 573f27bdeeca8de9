"""Outlook's ``Thread-Index`` header (MS-OXOMSG 2.2.1.3), so Outlook keeps a ticket together."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime

# FILETIME counts 100-nanosecond intervals since 1601-01-01 UTC (MS-DTYP 2.3.3).
_FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=UTC)
# A child block stores a 31-bit slice of the time since the header: bits 18..48 when the
# difference fits in 49 bits (about 1.78 years), else bits 23..53 with the delta-code bit set.
_SHORT_DELTA_LIMIT = 1 << 49


def _filetime(at: datetime) -> int:
    # A naive time is taken as UTC (SQLite hands back naive datetimes).
    moment = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    delta = moment - _FILETIME_EPOCH
    return (delta.days * 86_400 + delta.seconds) * 10_000_000 + delta.microseconds * 10


def thread_guid(seed: str) -> bytes:
    """Sixteen stable bytes for one conversation, e.g. from ``"TKT-7@tickets.acme.example"``."""
    return hashlib.sha256(seed.encode("utf-8")).digest()[:16]


def thread_index(root_time: datetime, guid: bytes, child_times: Sequence[datetime] = ()) -> str:
    """Base64 of the 22-byte header block plus one 5-byte child block per later message.

    Header: the top 48 bits of the root FILETIME (the first byte is 0x01 for dates from 1829
    to 2057, which is the "reserved = 0x01" byte MS-OXOMSG names) and the conversation GUID.
    Child: delta code (1 bit), time delta (31 bits), random (4 bits), sequence (4 bits), as in
    MAPI ScCreateConversationIndex; random and sequence are derived, so retries render alike.
    """
    if len(guid) != 16:
        raise ValueError("the conversation GUID must be 16 bytes")
    header_time = _filetime(root_time) >> 16
    out = bytearray(header_time.to_bytes(6, "big"))
    out += guid
    base = header_time << 16
    for position, child in enumerate(child_times):
        # Clock skew may put a reply before the root; Outlook only sorts by this, so clamp.
        delta = max(0, _filetime(child) - base)
        if delta < _SHORT_DELTA_LIMIT:
            word = (delta >> 18) & 0x7FFF_FFFF
        else:
            word = (1 << 31) | ((delta >> 23) & 0x7FFF_FFFF)
        nibbles = ((guid[position % 16] & 0x0F) << 4) | (position & 0x0F)
        out += word.to_bytes(4, "big") + bytes((nibbles,))
    return base64.b64encode(bytes(out)).decode("ascii")
