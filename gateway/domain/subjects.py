"""Subject tags ``[TKT-n]``, reply prefixes, and header text that cannot inject headers."""

from __future__ import annotations

import re

# "[TKT-123]" as people and mail clients mangle it: any case, spaces inside the brackets.
TAG_RE = re.compile(r"\[\s*TKT\s*-\s*(\d{1,18})\s*\]", re.IGNORECASE)

# Reply and forward prefixes that mail clients put in front of a subject, in the languages
# Outlook, Thunderbird and Gmail localise them to. "Re[2]:" / "Re(2):" are counted replies;
# the colon may be a full-width one (U+FF1A) in CJK clients.
_PREFIXES = (
    "re", "fw", "fwd", "aw", "wg", "sv", "vs", "vb", "antw", "doorst", "réf", "ref", "tr",
    "rif", "r", "i", "rv", "enc", "res", "odp", "pd", "vá", "vl", "ynt", "ilt", "atb", "πρθ",
    "απ", "σχετ", "отв", "пересл", "回复", "答复", "转发", "回覆", "轉寄", "返信", "転送",
)  # fmt: skip
_PREFIX_RE = re.compile(
    r"^\s*(?:"
    r"(?:" + "|".join(re.escape(p) for p in sorted(_PREFIXES, key=len, reverse=True)) + r")"
    r"\s*(?:\[\d+\]|\(\d+\))?\s*[:：]"
    r"|" + TAG_RE.pattern + r")\s*",
    re.IGNORECASE,
)

# C0 controls, DEL, C1 controls and the Unicode line/paragraph separators: any of them can
# end a header line in some parser (str.splitlines() alone knows eight line breaks).
_CONTROLS_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SPACES_RE = re.compile(r"\s+")
_FIELD_NAME_RE = re.compile(r"[\x21-\x39\x3b-\x7e]+")  # RFC 5322 §3.6.8 ftext


class HeaderInjection(ValueError):
    """A header we were about to generate holds a line break or NUL (CVE-2024-6923)."""


def find_ticket_refs(subject: str) -> tuple[int, ...]:
    """Every ticket number tagged in ``subject``, first occurrence order, without repeats."""
    seen: dict[int, None] = {}
    for match in TAG_RE.finditer(subject):
        seen.setdefault(int(match.group(1)), None)
    return tuple(seen)


def strip_reply_prefixes(subject: str) -> str:
    """``subject`` without leading reply/forward prefixes and ``[TKT-n]`` tags, however mixed."""
    text = subject
    while True:
        stripped = _PREFIX_RE.sub("", text, count=1)
        if stripped == text:
            return text.strip()
        text = stripped


def clean_header_text(s: str) -> str:
    """Text safe for any header we generate: no control characters, single spaces.

    CVE-2024-6923 (gh-121650): a line break that reaches a generated header becomes a real
    header line (an injected ``Bcc:``) on Pythons without the fix, 3.11.7 among them.
    """
    return _SPACES_RE.sub(" ", _CONTROLS_RE.sub(" ", s)).strip()


def tagged_subject(ref: str, subject: str) -> str:
    """``[TKT-7] <subject>`` with any earlier tags and reply prefixes removed."""
    core = TAG_RE.sub(" ", strip_reply_prefixes(clean_header_text(subject)))
    core = clean_header_text(core)
    tag = f"[{clean_header_text(ref)}]"
    return f"{tag} {core}" if core else tag


def check_header(name: str, value: str) -> None:
    """Raise HeaderInjection if ``name`` is not a field name or ``value`` holds CR, LF or NUL."""
    if not _FIELD_NAME_RE.fullmatch(name):
        raise HeaderInjection(f"invalid header name {name!r}")
    if any(c in value for c in "\r\n\x00"):
        raise HeaderInjection(f"line break or NUL in header {name}")
