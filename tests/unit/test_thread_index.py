"""Outlook Thread-Index: header block, child blocks, stable conversation GUIDs."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest

from gateway.domain.thread_index import thread_guid, thread_index

ROOT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
GUID = bytes(range(16))
UNIX_TO_FILETIME_SECONDS = 11_644_473_600  # 1601-01-01 to 1970-01-01


def filetime(at: datetime) -> int:
    return (int(at.timestamp()) + UNIX_TO_FILETIME_SECONDS) * 10_000_000 + at.microsecond * 10


def test_header_block_layout() -> None:
    """22 bytes: 0x01, the next five FILETIME bytes (big-endian), then the GUID."""
    raw = base64.b64decode(thread_index(ROOT, GUID))
    assert len(raw) == 22
    assert raw[0] == 0x01  # MS-OXOMSG 2.2.1.3 "Reserved: 0x01"
    assert raw[:6] == (filetime(ROOT) >> 16).to_bytes(6, "big")
    assert raw[6:] == GUID


def test_known_vector() -> None:
    """2024-05-01 12:00 UTC is FILETIME 0x01DA9BBF17BA6000; the value starts "Ad" like Outlook's."""
    value = thread_index(ROOT, GUID)
    assert value == base64.b64encode(bytes.fromhex("01da9bbf17ba") + GUID).decode()
    assert value.startswith("Ad")


def test_child_blocks_encode_the_delay() -> None:
    """Each later message adds 5 bytes whose 31-bit delta decodes back to its delay."""
    children = [ROOT + timedelta(minutes=5), ROOT + timedelta(days=3)]
    raw = base64.b64decode(thread_index(ROOT, GUID, children))
    assert len(raw) == 22 + 5 * len(children)
    base = int.from_bytes(raw[:6], "big") << 16
    for n, child in enumerate(children):
        block = raw[22 + 5 * n : 27 + 5 * n]
        word = int.from_bytes(block[:4], "big")
        assert word >> 31 == 0  # short delta code
        delta = (word & 0x7FFF_FFFF) << 18
        assert abs(base + delta - filetime(child)) < (1 << 18)
        assert block[4] & 0x0F == n  # sequence nibble


def test_long_delay_uses_the_long_delta_code() -> None:
    """More than about 1.78 years after the root, the delta code bit is set."""
    child = ROOT + timedelta(days=800)
    raw = base64.b64decode(thread_index(ROOT, GUID, [child]))
    word = int.from_bytes(raw[22:26], "big")
    assert word >> 31 == 1
    base = int.from_bytes(raw[:6], "big") << 16
    assert abs(base + ((word & 0x7FFF_FFFF) << 23) - filetime(child)) < (1 << 23)


def test_later_replies_sort_after_earlier_ones() -> None:
    """Outlook orders a conversation by this value: a later reply sorts later."""
    first = base64.b64decode(thread_index(ROOT, GUID, [ROOT + timedelta(hours=1)]))
    second = base64.b64decode(thread_index(ROOT, GUID, [ROOT + timedelta(hours=2)]))
    assert first[:22] == second[:22] and first < second


def test_child_before_root_is_clamped() -> None:
    """Clock skew cannot produce a negative delta or an error."""
    raw = base64.b64decode(thread_index(ROOT, GUID, [ROOT - timedelta(minutes=1)]))
    assert raw[22:26] == b"\x00\x00\x00\x00"


def test_same_input_same_value() -> None:
    """Retries of one outbox row render the same header."""
    children = [ROOT + timedelta(hours=1)]
    assert thread_index(ROOT, GUID, children) == thread_index(ROOT, GUID, children)


def test_naive_time_is_utc() -> None:
    """A naive datetime (as SQLite returns) counts as UTC."""
    assert thread_index(ROOT.replace(tzinfo=None), GUID) == thread_index(ROOT, GUID)


def test_thread_guid_is_stable_and_distinct() -> None:
    """One ticket and installation gives one GUID; another ticket gives another."""
    a = thread_guid("TKT-7@tickets.acme.example")
    assert len(a) == 16
    assert a == thread_guid("TKT-7@tickets.acme.example")
    assert a != thread_guid("TKT-8@tickets.acme.example")
    assert a != thread_guid("TKT-7@tickets.other.example")


def test_guid_must_be_16_bytes() -> None:
    """A GUID of the wrong size is a programming error."""
    with pytest.raises(ValueError):
        thread_index(ROOT, b"short")
