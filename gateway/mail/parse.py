"""Turn the raw bytes of one inbound mail into a frozen InboundMail value; pure, never raises."""

from __future__ import annotations

import binascii
import codecs
import functools
import hashlib
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import errors, policy
from email.headerregistry import AddressHeader
from email.message import Message
from email.parser import BytesFeedParser, BytesParser
from email.utils import getaddresses, parsedate_to_datetime
from functools import partial
from typing import Any, TypeVar

from gateway.mail.html_text import html_to_text, sanitise_html
from gateway.mail.quotes import strip_reply

T = TypeVar("T")


# The standard library parses MIME parameters in quadratic time: a 64 KiB Content-Type of
# 7,000 parameters took 2 s, RFC 2231 continuations in a Content-Disposition 0.4 s
# (2026-12-01). No real header comes near this (RFC 5322 §2.1.1: 998 characters a line; a
# long RFC 2231 file name is under 1 KiB), so what lies beyond is cut at a parameter boundary
# and the cut noted as a defect of the part; the raw mail is kept whole.
MAX_PARAMETER_HEADER = 4096
_PARAMETER_HEADERS = frozenset({"content-type", "content-disposition"})


def cut_parameters(value: str) -> str:
    """`value` cut to at most MAX_PARAMETER_HEADER characters, before a parameter's ";"."""
    head = value[:MAX_PARAMETER_HEADER]
    cut = head.rfind(";")
    return head[:cut] if cut > 0 else head


# The header objects `policy.default` hands out for short stored values, remembered: the
# email package asks for each part's Content-Type about fifteen times a mail and parses it
# afresh each time (more than half of parsing, cProfile 2026-12-01), and the same few values
# (text/plain; charset="utf-8", …) come in every mail. Header objects are immutable values.
_MEMO_HEADER_VALUE = 1024
_fetch_default = functools.lru_cache(maxsize=2048)(policy.default.header_fetch_parse)


class _IntakePolicy(policy.EmailPolicy):
    """`policy.default`, except that a Content-Type or Content-Disposition over
    MAX_PARAMETER_HEADER characters is cut (`cut_parameters`) before it is parsed, and that a
    short stored value's parsed header is remembered (`_fetch_default`)."""

    def header_fetch_parse(self, name: str, value: str) -> Any:
        if hasattr(value, "name"):  # already a header object (set by our code): as it is
            return super().header_fetch_parse(name, value)
        if len(value) <= _MEMO_HEADER_VALUE:
            return _fetch_default(name, value)
        if name.lower() in _PARAMETER_HEADERS and len(value) > MAX_PARAMETER_HEADER:
            value = cut_parameters(value)
        return super().header_fetch_parse(name, value)


_POLICY = _IntakePolicy()


@dataclass(frozen=True)
class Address:
    """One mailbox from an address header."""

    name: str  # decoded display name, CR/LF/NUL removed
    email: str  # addr-spec, lowercased; never taken from a header with parsing defects


@dataclass(frozen=True)
class ParsedAttachment:
    """A file carried by the mail; `filename` is for display and is never used as a path."""

    filename: str
    content_type: str
    data: bytes
    sha256: str
    inline: bool
    content_id: str | None
    active: bool  # a type that can run code or script when opened; flagged, still kept


@dataclass(frozen=True)
class DroppedAttachment:
    """A file the mail carried that was not kept: `size` bytes over `limit`, the cap per file
    (`per_file`) or for all attachments of the mail together (not `per_file`)."""

    filename: str
    size: int
    limit: int
    per_file: bool


@dataclass(frozen=True)
class ParseLimits:
    """Bounds that keep a hostile or broken message from exhausting memory or time."""

    max_parts: int = 200
    max_depth: int = 10
    max_attachment_bytes: int = 10 * 1024 * 1024  # per file
    max_total_attachment_bytes: int = 25 * 1024 * 1024  # per message
    max_header_bytes: int = 256 * 1024


@dataclass(frozen=True)
class InboundMail:
    """Everything the gateway needs to know about one inbound mail.

    Nested message/rfc822 parts (forwards, bounced originals) are kept whole as `.eml`
    attachments and their text is *not* appended to `text`: a forward's body belongs to
    someone else, and bounce rules read the original from the attachment.
    """

    raw: bytes
    raw_sha256: str
    message_id: str | None = None
    from_addr: Address | None = None
    sender_header: Address | None = None
    return_path: str | None = None
    reply_to: tuple[Address, ...] = ()
    to: tuple[Address, ...] = ()
    cc: tuple[Address, ...] = ()
    delivered_to: tuple[str, ...] = ()
    subject: str = ""
    in_reply_to: tuple[str, ...] = ()
    references: tuple[str, ...] = ()
    date: datetime | None = None
    text: str = ""
    new_text: str = ""
    html: str | None = None
    attachments: tuple[ParsedAttachment, ...] = ()
    dropped_attachments: tuple[DroppedAttachment, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    auth_results: tuple[str, ...] = ()
    user_agent: str | None = None
    received: tuple[str, ...] = ()
    content_type: str = "text/plain"
    report_type: str | None = None
    defects: tuple[str, ...] = field(default=())


def header(mail: InboundMail, name: str) -> str | None:
    """The first value of a top-level header, looked up by case-insensitive name."""
    wanted = name.lower()
    for key, value in mail.headers:
        if key == wanted:
            return value
    return None


def headers_named(mail: InboundMail, name: str) -> tuple[str, ...]:
    """Every value of a top-level header, in order, looked up by case-insensitive name."""
    wanted = name.lower()
    return tuple(value for key, value in mail.headers if key == wanted)


# --- public entry point ---------------------------------------------------------------


def parse_mail(raw: bytes, *, limits: ParseLimits = ParseLimits()) -> InboundMail:
    """Parse one message. Never raises: what cannot be read is noted in `defects`."""
    digest = hashlib.sha256(raw).hexdigest()
    try:
        return _Parser(raw, digest, limits).run()
    except Exception as exc:  # noqa: BLE001 - the contract is "never raises"; the raw is kept
        # The caller still receives the raw bytes (to quarantine them) and a defect note that
        # names the failure, so nothing is dropped silently.
        return InboundMail(
            raw=raw,
            raw_sha256=digest,
            defects=(f"parser failure: {type(exc).__name__}: {exc}"[:500],),
        )


# --- text hygiene ---------------------------------------------------------------------

# C0/C1 controls, DEL, and the Unicode line/paragraph separators that some renderers treat
# as line breaks: none may survive into a one-line value (header injection, log forging).
_CONTROL_RUN = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\s]+")
# Bidirectional overrides and other format characters make a name or filename display
# differently from what it is ("invoice\u202egpj.exe").
_FORMAT_CHARS = re.compile(r"[\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")


def one_line(value: str) -> str:
    """Collapse every run of whitespace or control characters to one space and strip."""
    return _CONTROL_RUN.sub(" ", _FORMAT_CHARS.sub("", value)).strip()


def _unsurrogate(value: str) -> str:
    """Undo the surrogateescape that the email package uses for raw 8-bit header bytes.

    RFC 6532 allows UTF-8 in headers; anything else undeclared is guessed as windows-1252
    so that the value is at least readable.
    """
    if not any("\udc80" <= ch <= "\udcff" for ch in value):
        return value
    data = value.encode("utf-8", "surrogateescape")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


# Charset labels seen in real mail that Python's codec registry does not know, or knows by
# a narrower codec than senders actually use (WHATWG Encoding Standard, "labels").
_CHARSET_ALIASES = {
    "unicode-1-1-utf-7": "utf-7",
    "ansi_x3.110-1983": "latin-1",
    "iso-8859-8-i": "iso-8859-8",
    "ks_c_5601-1987": "cp949",
    "ks_c_5601": "cp949",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "shift_jis": "cp932",
    "x-sjis": "cp932",
    "windows-874": "cp874",
    "x-mac-roman": "mac-roman",
    "us-ascii": "cp1252",  # 8-bit bytes under a us-ascii label are almost always cp1252
    "ascii": "cp1252",
    "iso-8859-1": "cp1252",  # WHATWG: latin-1 labels decode as windows-1252
    "latin1": "cp1252",
    "unknown-8bit": "cp1252",
    "x-unknown": "cp1252",
}


def decode_text(data: bytes, charset: str | None) -> tuple[str, str | None]:
    """Decode a body part; returns the text and a defect note when the label was wrong."""
    label = (charset or "us-ascii").strip().strip('"').lower()
    name = _CHARSET_ALIASES.get(label, label)
    try:
        codecs.lookup(name)
    except LookupError:
        text = _decode_guess(data)
        return text, f"unknown charset {label[:40]!r}; decoded as utf-8/cp1252"
    try:
        return data.decode(name), None
    except (UnicodeDecodeError, ValueError):
        pass
    if name != "utf-8":
        try:
            return data.decode("utf-8"), f"part declared {label[:40]!r} but is utf-8"
        except UnicodeDecodeError:
            pass
    return data.decode(name, "replace"), f"undecodable bytes in {label[:40]!r} part replaced"


_PRINTABLE_ASCII = "".join(map(chr, range(0x20, 0x7F)))


def header_codec(charset: str | None) -> str | None:
    """The codec for raw 8-bit header bytes under a declared charset label, or None when the
    label is unknown, UTF-8 (the bytes were tried as UTF-8 already) or not ASCII-compatible
    (UTF-7, UTF-16: a header's ASCII would not read as itself)."""
    label = (charset or "").strip().strip('"').lower()
    if not label:
        return None
    try:
        name = codecs.lookup(_CHARSET_ALIASES.get(label, label)).name
    except LookupError:
        return None
    try:
        plain = _PRINTABLE_ASCII.encode(name) == _PRINTABLE_ASCII.encode()
    except (UnicodeError, LookupError):
        plain = False
    return name if plain and name != "utf-8" else None


def _decode_guess(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


# --- raw-level preparation --------------------------------------------------------------

_HEADER_END = re.compile(rb"\r?\n\r?\n")


def _prepare(raw: bytes, limits: ParseLimits, defects: list[str]) -> bytes:
    """Fix line endings the parser cannot cope with and cap the header section size."""
    if b"\r" in raw and b"\n" not in raw:
        # Classic Mac OS line endings (CR only) are not RFC 5322 line breaks; the feed parser
        # would see one endless header line.
        raw = raw.replace(b"\r", b"\n")
        defects.append("CR-only line endings converted")
    end = _HEADER_END.search(raw)
    head_len = end.start() if end else len(raw)
    if head_len > limits.max_header_bytes:
        cut = raw.rfind(b"\n", 0, limits.max_header_bytes)
        # Cut before the last complete header field so no field is parsed half.
        while cut > 0 and raw[cut + 1 : cut + 2] in (b" ", b"\t"):
            cut = raw.rfind(b"\n", 0, cut)
        body = raw[end.end() :] if end else b""
        raw = raw[: max(cut, 0)] + b"\n\n" + body
        defects.append(f"header section over {limits.max_header_bytes} bytes truncated")
    return raw


# --- MIME nesting ---------------------------------------------------------------------

# email.feedparser (and the generator that writes a part back out) recurses once per nesting
# level: about 1,000 levels exhaust Python's recursion limit (issue 12). So the nesting is
# measured on the raw bytes before the parser runs, and a mail nested deeper than the limit
# is read as headers and one opaque body.
#
# Below the top, a level is a part of a multipart or message/* part, and that needs a
# Content-Type field, except in a multipart/digest, whose parts are message/rfc822 by
# default: a mail has at most twice as many levels as Content-Type fields, and one with few
# of them needs no scan. (Counted as "-type:" in any case: a case-blind search of the whole
# mail took ten times as long, 0.4 s for 25 MiB.)
_TYPE_FIELD = re.compile(rb"-[Tt][Yy][Pp][Ee]:")
# A part whose Content-Type fields name none of these is no multipart or message/* part.
_CONTENT_TYPE_VALUE = re.compile(rb"(?:^|[\r\n])content-type:((?:[^\r\n]|(?:\r\n|\r|\n)[ \t])*)")
_CONTAINER_WORDS = (b"multipart", b"message", b"=?")


def _may_contain_parts(head: bytes) -> bool:
    """Whether a Content-Type field of the header section `head` may name a multipart or
    message/* type (an encoded word is not read here: it may)."""
    fields = _CONTENT_TYPE_VALUE.finditer(head.lower())
    return any(w in f.group(1) for f in fields for w in _CONTAINER_WORDS)


# RFC 5322 §2.2 field names, continuation lines and the mbox "From " line: what the feed
# parser reads as part of a header section.
_HEADER_LINE = re.compile(rb"From |[\x21-\x39\x3b-\x7e]*:|[ \t]")


def mime_nesting_exceeds(raw: bytes, limit: int) -> bool:
    """Whether the email package would nest a part of `raw` deeper than `limit` levels (the
    message itself is level 0, its parts level 1, a message/rfc822 part's message one more)."""
    for fields, _ in enumerate(_TYPE_FIELD.finditer(raw), start=1):
        if 2 * fields > limit:
            return _NestingScan(raw, limit).exceeds()
    return False


_LINE_END = re.compile(rb"\r\n|\r|\n")


class _NestingScan:
    """Finds where parts begin and end as email.feedparser does (header sections, boundary
    lines of the enclosing multiparts, repeated boundaries, digests), reading each part's
    Content-Type with the email package; stops at the first part deeper than the limit.
    Between header sections it looks only at lines that start with "--"."""

    def __init__(self, raw: bytes, limit: int) -> None:
        self.raw = raw
        self.pos = 0
        self.limit = limit
        self.enclosing: list[re.Pattern[bytes]] = []  # boundary lines of enclosing multiparts

    def exceeds(self) -> bool:
        return self._part(0, default_type="text/plain")

    def _line_end(self, pos: int) -> int:
        eol = _LINE_END.search(self.raw, pos)
        return eol.end() if eol else len(self.raw)

    def _line(self, pos: int) -> bytes:
        return self.raw[pos : self._line_end(pos)]

    def _at_end(self) -> bool:
        """At the end of the input, or at a boundary line of an enclosing multipart."""
        if self.pos >= len(self.raw):
            return True
        if not self.raw.startswith(b"--", self.pos):
            return False
        line = self._line(self.pos)
        return any(b.match(line) for b in self.enclosing)

    def _own_boundary(self, pattern: re.Pattern[bytes]) -> re.Match[bytes] | None:
        """The match of `pattern` on the line here, unless an enclosing boundary ends it first."""
        if self._at_end() or not self.raw.startswith(b"--", self.pos):
            return None
        return pattern.match(self._line(self.pos))

    def _skip(self, own: re.Pattern[bytes] | None = None) -> re.Match[bytes] | None:
        """Move to the next line that ends this part (the end, an enclosing boundary) or is a
        boundary line of `own`; the match of `own` there, if so."""
        while not self._at_end():
            if own is not None and (found := self._own_boundary(own)) is not None:
                return found
            nxt = self.raw.find(b"--", self.pos + 1)
            while nxt > 0 and self.raw[nxt - 1 : nxt] not in (b"\n", b"\r"):
                nxt = self.raw.find(b"--", nxt + 1)
            self.pos = len(self.raw) if nxt < 0 else nxt
        return None

    def _part(self, level: int, *, default_type: str) -> bool:
        if level > self.limit:
            return True
        start = self.pos
        while not self._at_end() and _HEADER_LINE.match(self.raw, self.pos):
            self.pos = self._line_end(self.pos)
        head = self.raw[start : self.pos]
        if not self._at_end() and self.raw[self.pos : self.pos + 1] in (b"\r", b"\n"):
            self.pos = self._line_end(self.pos)  # the blank line that ends the header section
        if default_type == "text/plain" and not _may_contain_parts(head):
            self._skip()  # a leaf, known without parsing its header section
            return False
        part = BytesParser(policy=_POLICY).parsebytes(head, headersonly=True)
        part.set_default_type(default_type)
        ctype = part.get_content_type()
        if ctype == "message/delivery-status":  # header blocks, one level down, no deeper
            self._skip()
            return level + 1 > self.limit
        if part.get_content_maintype() == "message":
            return self._part(level + 1, default_type="text/plain")
        boundary = part.get_boundary() if part.get_content_maintype() == "multipart" else None
        try:
            separator = (
                None if boundary is None else ("--" + boundary).encode("ascii", "surrogateescape")
            )
        except UnicodeEncodeError:  # a decoded non-ASCII boundary matches no raw line
            separator = None
        if separator is None:
            self._skip()
            return False
        own = re.compile(re.escape(separator) + rb"(--)?[ \t]*(?:\r\n|\r|\n)?\Z")
        child_type = "message/rfc822" if ctype == "multipart/digest" else "text/plain"
        while (found := self._skip(own)) is not None:
            self.pos = self._line_end(self.pos)
            if found.group(1):  # the close delimiter; the epilogue follows
                self._skip()
                return False
            while self._own_boundary(own) is not None:
                self.pos = self._line_end(self.pos)  # repeated boundary lines make no part
            self.enclosing.append(own)
            deeper = self._part(level + 1, default_type=child_type)
            self.enclosing.pop()
            if deeper:
                return True
        return False


# --- addresses ------------------------------------------------------------------------

# A plausible addr-spec after parsing: one "@", no spaces, brackets, quotes or controls.
# RFC 5321 §4.5.3.1.3: a path is at most 256 octets, so a mailbox at most 254.
_ADDR_SPEC = re.compile(r"^(?=.{3,254}$)[^\s@<>\"(),;:\\\[\]]+@[^\s@<>\"(),;:\\\[\]]+$")
# Structured parsing of absurdly long address headers costs time for nothing.
_MAX_ADDRESS_HEADER = 16 * 1024


def _parse_addresses(
    name: str, values: list[str], defects: list[str]
) -> tuple[Address, ...] | None:
    """Parse address headers strictly; None when any value is ambiguous or defective.

    CVE-2023-27043: email.utils could read "alice@example.org)<bob@example.org>" as a
    different mailbox than a mail client shows. We require the modern parser to report no
    defects *and* the legacy parser to find the same mailboxes, or we take none at all.
    """
    found: list[Address] = []
    for value in values:
        if len(value) > _MAX_ADDRESS_HEADER:
            defects.append(f"{name}: header too long to parse safely")
            return None
        read = _remembered_address_value if len(value) <= _MEMO_HEADER_VALUE else _address_value
        here, defect = read(name, value)
        if defect:
            defects.append(defect)
        if here is None:
            return None
        found.extend(here)
    return tuple(found)


def _address_value(name: str, value: str) -> tuple[tuple[Address, ...] | None, str]:
    """One address header value: its mailboxes, or None and (mostly) the defect why."""
    try:
        parsed = policy.default.header_factory(name, value)
    except Exception as exc:  # noqa: BLE001 - header parser bugs (e.g. bpo-44637)
        return None, f"{name}: unparseable ({type(exc).__name__})"
    serious = [d for d in parsed.defects if not _harmless_address_defect(d)]
    if serious:
        note = "; ".join(str(d) or type(d).__name__ for d in serious)
        return None, f"{name}: {note[:200]}"
    if not isinstance(parsed, AddressHeader):
        return None, ""
    here: list[Address] = []
    for addr in parsed.addresses:
        spec = addr.addr_spec
        if not spec or spec == "<>":
            continue
        spec = one_line(_unsurrogate(spec)).lower()
        if not _ADDR_SPEC.match(spec):
            return None, f"{name}: implausible address {spec[:80]!r}"
        here.append(Address(name=one_line(_unsurrogate(addr.display_name)), email=spec))
    legacy = {a.lower() for _, a in getaddresses([value]) if a}
    if legacy != {a.email for a in here}:
        return None, f"{name}: parsers disagree on the mailboxes; ignored"
    return tuple(here), ""


# The verdict on a short address value, remembered: the same senders and department
# addresses come in every mail, and the two parsers were a third of parsing (cProfile,
# 2026-12-01). The verdict is an immutable value.
_remembered_address_value = functools.lru_cache(maxsize=2048)(_address_value)


# Defects that concern only how a display name is written, never which mailbox is meant:
# obsolete syntax (RFC 5322 §4.1, e.g. an unquoted "John Q. Public"), raw 8-bit bytes in a
# name, and Outlook's encoded words inside quotes (RFC 2047 §5 forbids them, clients send
# them anyway). Everything else leaves the address unread.
_HARMLESS_DEFECT_TEXT = (
    "encoded word inside quoted string",
    "missing trailing whitespace after encoded-word",
    "missing whitespace before encoded word",
)


def _harmless_address_defect(defect: Exception) -> bool:
    if isinstance(defect, (errors.ObsoleteHeaderDefect, errors.UndecodableBytesDefect)):
        return True
    return isinstance(defect, errors.InvalidHeaderDefect) and str(defect) in _HARMLESS_DEFECT_TEXT


def _bare_addresses(values: list[str]) -> tuple[str, ...]:
    """Addresses from trace headers (Delivered-To, X-Original-To …): one addr each, maybe <>."""
    out: list[str] = []
    for value in values:
        for token in re.split(r"[\s,;]+", value):
            token = token.strip("<>\"'").lower()
            if _ADDR_SPEC.match(token) and token not in out:
                out.append(token)
    return tuple(out)


# --- message ids ----------------------------------------------------------------------

_MSG_ID = re.compile(r"<([^<>\s]{1,900})>")


def _message_ids(value: str) -> tuple[str, ...]:
    """Message ids in order (RFC 5322 §3.6.4); bare ids with an "@" are accepted too."""
    ids = [m for m in _MSG_ID.findall(value) if _plausible_id(m)]
    if not ids and "<" not in value:
        ids = [t for t in value.split() if "@" in t and _plausible_id(t)]
    return tuple(dict.fromkeys(ids))


def _plausible_id(value: str) -> bool:
    return bool(value) and not _CONTROL_RUN.search(value) and len(value) <= 900


# --- active content -------------------------------------------------------------------

# File types that run code, scripts or installers when opened, or render active markup.
_ACTIVE_EXTENSIONS = frozenset(
    {
        "exe", "com", "scr", "pif", "bat", "cmd", "ps1", "psm1", "psd1", "vbs", "vbe", "js",
        "jse", "mjs", "wsf", "wsh", "wsc", "hta", "lnk", "iso", "img", "vhd", "vhdx", "msi",
        "msp", "mst", "dll", "cpl", "jar", "reg", "scf", "url", "inf", "application", "gadget",
        "chm", "html", "htm", "xhtml", "shtml", "mht", "mhtml", "svg", "xml", "xsl", "sh",
        "docm", "dotm", "xlsm", "xltm", "xlam", "pptm", "potm", "ppam", "sldm", "one", "appx",
        "msix", "appref-ms", "settingcontent-ms", "library-ms", "py", "pyw", "ps2", "apk",
    }
)  # fmt: skip
_ACTIVE_TYPES = frozenset(
    {
        "text/html", "application/xhtml+xml", "image/svg+xml", "application/javascript",
        "text/javascript", "application/x-javascript", "application/hta", "text/vbscript",
        "application/x-msdownload", "application/x-msdos-program", "application/x-ms-shortcut",
        "application/x-iso9660-image", "application/x-sh", "application/x-bat",
        "application/java-archive", "application/vnd.ms-htmlhelp", "application/x-ms-installer",
        "application/x-msi", "application/vnd.microsoft.portable-executable",
    }
)  # fmt: skip

_MAX_FILENAME = 150


def sanitise_filename(name: str | None, *, fallback: str = "attachment.bin") -> str:
    """A display name for a file: basename only, no controls, no leading dots, ≤150 chars."""
    if not name:
        return fallback
    name = _unsurrogate(name)
    name = re.split(r"[/\\]", name)[-1]  # a declared path is never followed
    name = unicodedata.normalize("NFC", name)
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    name = re.sub(r"\s+", " ", name).strip(" .")  # Windows ignores trailing dots and spaces
    name = name.lstrip(".")  # no hidden files, no ".." tricks
    if len(name) > _MAX_FILENAME:
        stem, dot, ext = name.rpartition(".")
        if dot and 0 < len(ext) <= 16:
            name = stem[: _MAX_FILENAME - len(ext) - 1].rstrip(" .") + "." + ext
        else:
            name = name[:_MAX_FILENAME]
    return name or fallback


def is_active(filename: str, content_type: str) -> bool:
    """Whether opening this attachment could run code or active markup."""
    ext = filename.rpartition(".")[2].lower() if "." in filename else ""
    return ext in _ACTIVE_EXTENSIONS or content_type in _ACTIVE_TYPES


# --- the parser -----------------------------------------------------------------------

# Body parts that are machine-readable reports rather than words from the sender; kept as
# attachments so rules can read them (RFC 3464 §2, RFC 6522 §3, RFC 5965 §2).
_REPORT_TYPES = frozenset(
    {
        "message/delivery-status",
        "message/global-delivery-status",
        "message/disposition-notification",
        "message/global-disposition-notification",
        "message/feedback-report",
        "text/rfc822-headers",
        "message/rfc822-headers",  # a common misspelling of text/rfc822-headers
        "message/global-headers",
    }
)
_LINE_BREAK = re.compile(r"\r|\n")
_RAW_BYTE = re.compile("[\udc80-\udcff]")  # a raw 8-bit byte as the email package keeps it
_NESTED_MESSAGE_TYPES = frozenset({"message/rfc822", "message/global"})

# Peak memory (issue 12): BytesParser.parsebytes decodes the whole mail to one str and reads it
# through a StringIO, which holds 4 bytes a character: 5 copies of a mail of ASCII before the
# parse begins. Fed in slices, the feed parser (which parsebytes drives in 8 KiB pieces
# itself) never holds more than a slice of the undivided mail.
_FEED_BYTES = 64 * 1024


def _feed(data: bytes) -> Message:
    """`data` parsed as BytesParser(policy=_POLICY).parsebytes would, fed in slices."""
    parser = BytesFeedParser(policy=_POLICY)
    view = memoryview(data)
    for start in range(0, len(data), _FEED_BYTES):
        parser.feed(bytes(view[start : start + _FEED_BYTES]))
    msg = parser.close()
    assert isinstance(msg, Message)
    return msg


def _base64_payload(part: Message) -> bytes | None:
    """A base64 body decoded straight from the part's str, or None for the email package to
    decode. `get_payload(decode=True)` holds four copies at once (the str, its bytes, the
    lines of those, the lines joined); a2b_base64 skips the line breaks in one pass and gives
    the same bytes for well-formed base64. What it refuses (bad padding, non-ASCII) is left
    to the email package's lenient decoder."""
    if str(part.get("content-transfer-encoding", "")).lower() != "base64":
        return None
    payload = part.get_payload()
    if not isinstance(payload, str) or not payload.isascii():
        return None
    try:
        return binascii.a2b_base64(payload)
    except (binascii.Error, ValueError):
        return None


class _Parser:
    """One parse; collects defects as it goes so each step can fail on its own."""

    def __init__(self, raw: bytes, digest: str, limits: ParseLimits) -> None:
        self.raw = raw
        self.digest = digest
        self.limits = limits
        self.defects: list[str] = []
        self.parts_seen = 0
        self.attachment_bytes = 0
        self.plain: list[str] = []
        self.html: list[str] = []
        self.attachments: list[ParsedAttachment] = []
        self.dropped: list[DroppedAttachment] = []
        self.raw_header_codec: str | None = None  # for raw 8-bit header bytes, once needed

    def run(self) -> InboundMail:
        prepared = _prepare(self.raw, self.limits, self.defects)
        msg, nested_too_deep = self._message(prepared)
        self._note_defects("message", msg)
        items = [(k, self._raw_8bit(msg, k, v)) for k, v in self._raw_items(msg)]
        headers = tuple((name.lower(), self._decode_header(name, value)) for name, value in items)

        def raw_values(name: str) -> list[str]:
            return [v for k, v in items if k.lower() == name]

        def values(name: str) -> list[str]:
            return [v for k, v in headers if k == name]

        from_list = _parse_addresses("from", raw_values("from"), self.defects)
        from_addr: Address | None = None
        if from_list is not None and len(from_list) == 1:
            from_addr = from_list[0]
        elif from_list:
            self.defects.append(f"from: {len(from_list)} mailboxes; no single author")
        sender = _parse_addresses("sender", raw_values("sender")[:1], self.defects)

        if nested_too_deep:
            self.defects.append(
                f"MIME nesting deeper than {self.limits.max_depth} levels;"
                " body kept as one text part"
            )
            self.plain.append(self._text_of(msg))
        else:
            self._walk(msg, depth=0)
        text = "\n\n".join(t for t in self.plain if t.strip())
        html_src = "\n".join(self.html)
        if not text.strip() and html_src:
            text = html_to_text(html_src)
        html = sanitise_html(html_src) if html_src else None

        content_type = self._safe_content_type(msg)
        report_type = None
        if content_type == "multipart/report":
            param = self._safe(lambda: msg.get_param("report-type"), None)
            report_type = one_line(str(param)).lower() if isinstance(param, str) else None

        message_ids = values("message-id")
        return_paths = values("return-path")
        return InboundMail(
            raw=self.raw,
            raw_sha256=self.digest,
            message_id=(_message_ids(message_ids[0]) or (None,))[0] if message_ids else None,
            from_addr=from_addr,
            sender_header=sender[0] if sender else None,
            return_path=self._return_path(return_paths[0]) if return_paths else None,
            reply_to=_parse_addresses("reply-to", raw_values("reply-to"), self.defects) or (),
            to=_parse_addresses("to", raw_values("to"), self.defects) or (),
            cc=_parse_addresses("cc", raw_values("cc"), self.defects) or (),
            delivered_to=_bare_addresses(
                values("delivered-to")
                + values("x-original-to")
                + values("x-gm-original-to")
                + values("envelope-to")
            ),
            # RFC 5322 §2.1.1: a line holds at most 998 characters; so does the stored subject.
            subject=one_line(values("subject")[0])[:998] if values("subject") else "",
            in_reply_to=_message_ids(" ".join(values("in-reply-to"))),
            references=_message_ids(" ".join(values("references"))),
            date=self._date(values("date")),
            text=text,
            new_text=strip_reply(text),
            html=html,
            attachments=tuple(self.attachments),
            dropped_attachments=tuple(self.dropped),
            headers=tuple((k, one_line(v)) for k, v in headers),
            auth_results=tuple(one_line(v) for v in values("authentication-results")),
            user_agent=next(
                (one_line(v) for v in values("user-agent") + values("x-mailer") if v.strip()),
                None,
            ),
            received=tuple(one_line(v) for v in values("received")),
            content_type=content_type,
            report_type=report_type,
            defects=tuple(dict.fromkeys(self.defects)),
        )

    def _message(self, prepared: bytes) -> tuple[Message, bool]:
        """The parsed message, and whether it was nested too deep to parse beyond its
        headers (then its body is the payload, as text)."""
        if not mime_nesting_exceeds(prepared, self.limits.max_depth):
            try:
                return _feed(prepared), False
            except RecursionError:  # a structure the scan misjudged; never seen
                pass
        return BytesParser(policy=_POLICY).parsebytes(prepared, headersonly=True), True

    # -- helpers that never let one bad field sink the whole parse --

    def _note_defects(self, where: str, part: Message) -> None:
        for defect in getattr(part, "defects", ()):
            detail = str(defect)
            name = type(defect).__name__
            self.defects.append(f"{where}: {name}{': ' + detail if detail else ''}"[:300])
        for header, value in part.raw_items():
            if len(value) > MAX_PARAMETER_HEADER and header.lower() in _PARAMETER_HEADERS:
                self.defects.append(
                    f"{where}: {header.lower()} over {MAX_PARAMETER_HEADER} characters;"
                    " parameters cut"
                )

    def _raw_items(self, msg: Message) -> list[tuple[str, str]]:
        try:
            return [(str(k), str(v)) for k, v in msg.raw_items()]
        except Exception as exc:  # noqa: BLE001 - keep going without headers, noted
            self.defects.append(f"headers unreadable: {type(exc).__name__}")
            return []

    def _raw_8bit(self, msg: Message, name: str, value: str) -> str:
        """`value` with the raw 8-bit bytes that the email package keeps surrogate-escaped
        decoded: as UTF-8 (RFC 6532) if they are UTF-8, else in the mail's declared charset,
        else as windows-1252; a guess is noted as a defect."""
        if not _RAW_BYTE.search(value):
            return value
        data = value.encode("utf-8", "surrogateescape")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
        if self.raw_header_codec is None:
            self.raw_header_codec = self._declared_codec(msg) or "cp1252"
        label = "windows-1252" if self.raw_header_codec == "cp1252" else self.raw_header_codec
        self.defects.append(f"{name.lower()[:60]}: raw 8-bit header bytes decoded as {label}")
        return data.decode(self.raw_header_codec, "replace")

    def _declared_codec(self, msg: Message) -> str | None:
        """The codec of the first charset the mail declares: on its own Content-Type, else
        on its first text part's (looked for among at most max_parts parts, no recursion)."""
        queue = [msg]
        for _ in range(self.limits.max_parts):
            if not queue:
                break
            part = queue.pop(0)
            if part is msg or part.get_content_maintype() == "text":
                charset = self._safe(partial(part.get_param, "charset"), None)
                if isinstance(charset, str) and charset:
                    return header_codec(charset)
            if part.is_multipart():
                queue.extend(p for p in part.get_payload() if isinstance(p, Message))
        return None

    def _decode_header(self, name: str, value: str) -> str:
        """Unfold and decode RFC 2047 encoded words; never raises."""
        if len(value) > 64 * 1024:
            value = value[: 64 * 1024]
            self.defects.append(f"{name.lower()[:60]}: value over 64 KiB cut")
        # Unfold as EmailPolicy.header_fetch_parse does: a line break left between two encoded
        # words would read as a space inside a word ("зо лото").
        value = _LINE_BREAK.sub("", value)
        if "=?" not in value and value.isascii():
            # Nothing to decode: unfolding is all the header parser would do, at a fraction of
            # its cost (it was the largest part of parsing a typical mail).
            return value.strip()
        try:
            decoded = str(policy.default.header_factory(name, value))
        except Exception:  # noqa: BLE001 - header parser bugs; fall back to the raw text
            self.defects.append(f"{name.lower()[:60]}: encoded words undecodable")
            decoded = value
        return _unsurrogate(decoded)

    def _safe_content_type(self, part: Message) -> str:
        try:
            ctype = str(part.get_content_type()).lower()
            # RFC 6838 §4.2: type and subtype names are at most 127 characters each.
            return ctype if len(ctype) <= 255 else "application/octet-stream"
        except Exception:  # noqa: BLE001 - RFC 2045 §5.2: default to text/plain
            return "text/plain"

    def _return_path(self, value: str) -> str:
        """RFC 5321 §4.4: the reverse path; "" for the null path <>."""
        inner = value.strip()
        match = re.search(r"<([^<>]*)>", inner)
        addr = (match.group(1) if match else inner).strip().lower()
        return addr if _ADDR_SPEC.match(addr) else ""

    def _date(self, values: list[str]) -> datetime | None:
        if not values:
            return None
        try:
            parsed = parsedate_to_datetime(values[0])
        except (TypeError, ValueError, IndexError, OverflowError):
            self.defects.append("date: unparseable")
            return None
        if parsed.tzinfo is None:  # RFC 5322 §3.3: "-0000" means UTC, zone unknown
            parsed = parsed.replace(tzinfo=UTC)
        return parsed

    # -- body structure --

    def _walk(self, part: Message, *, depth: int) -> None:
        """Visit MIME parts depth-first, honouring part and depth limits."""
        self.parts_seen += 1
        if self.parts_seen > self.limits.max_parts:
            if self.parts_seen == self.limits.max_parts + 1:
                self.defects.append(f"more than {self.limits.max_parts} MIME parts; rest dropped")
            return
        if depth > self.limits.max_depth:
            self.defects.append(f"MIME nesting deeper than {self.limits.max_depth}; part dropped")
            return
        if depth:
            self._note_defects(f"part {self.parts_seen}", part)
        ctype = self._safe_content_type(part)
        if part.is_multipart() and ctype.startswith("multipart/"):
            children = part.get_payload()
            if not isinstance(children, list):
                return
            if ctype == "multipart/alternative":
                parts = [c for c in children if isinstance(c, Message)]
                self._walk_alternative(parts, depth=depth)
            else:
                for child in children:
                    if isinstance(child, Message):
                        self._walk(child, depth=depth + 1)
            return
        if ctype in _NESTED_MESSAGE_TYPES:
            self._attach(part, ctype, self._nested_bytes(part), fallback="message.eml")
            return
        if ctype.startswith("message/") and part.is_multipart():
            # The email package splits RFC 3464 delivery-status (and similar report bodies)
            # into one pseudo-message per header block; put the blocks back together.
            self._attach(part, ctype, self._header_blocks(part))
            return
        if ctype in ("text/plain", "text/html") and not self._is_attachment(part):
            body = self._text_of(part)
            (self.plain if ctype == "text/plain" else self.html).append(body)
            return
        if ctype.startswith("multipart/"):
            # RFC 2046 §5.1.1 boundary missing or never found: the parser kept the body as
            # one blob. Read it as text so the words are not lost (best effort).
            self.defects.append(
                f"part {self.parts_seen}: {ctype} without usable boundary; read as text"
            )
            self.plain.append(self._text_of(part))
            return
        if part.is_multipart():  # a multipart body under a non-multipart label
            self.defects.append(f"part {self.parts_seen}: {ctype} with sub-parts")
            return
        self._attach(part, ctype, self._payload(part))

    def _walk_alternative(self, children: list[Message], *, depth: int) -> None:
        """RFC 2046 §5.1.4: alternatives, last is richest; we want the plain one for text."""
        kinds = [self._safe_content_type(c) for c in children if isinstance(c, Message)]
        if "text/plain" in kinds:
            plain_count, html_count = len(self.plain), len(self.html)
            for child in children:
                if isinstance(child, Message):
                    self._walk(child, depth=depth + 1)
            # Keep exactly one rendering: the plain text for `text`, the HTML for `html`.
            del self.plain[plain_count + 1 :]
            del self.html[html_count + 1 :]
        else:
            for child in reversed(children):  # the richest alternative we can read
                if isinstance(child, Message):
                    self._walk(child, depth=depth + 1)
                    break

    def _is_attachment(self, part: Message) -> bool:
        disposition = self._safe(lambda: part.get_content_disposition(), None)
        return disposition == "attachment"

    def _safe_filename(self, part: Message) -> str | None:
        name = self._safe(lambda: part.get_filename(), None)
        if isinstance(name, str) and "\ufffd" in name:  # raw 8-bit bytes, replaced
            name = self._safe(lambda: self._filename_of_raw_8bit(part), None) or name
        return name if isinstance(name, str) else None

    def _filename_of_raw_8bit(self, part: Message) -> str | None:
        """The file name read from the part's Content-Disposition and Content-Type with their
        raw 8-bit bytes decoded as every header's are (`_raw_8bit`)."""
        decoded = Message(policy=_POLICY)
        for key, value in part.raw_items():
            if key.lower() in _PARAMETER_HEADERS:
                decoded[key] = _LINE_BREAK.sub("", self._raw_8bit(part, key, value))
        name = decoded.get_filename()
        return name if isinstance(name, str) else None

    def _payload(self, part: Message) -> bytes:
        decoded = self._safe(lambda: _base64_payload(part), None)
        if decoded is not None:
            return decoded
        data = self._safe(lambda: part.get_payload(decode=True), None)
        if isinstance(data, bytes):
            return data
        return b""

    def _nested_bytes(self, part: Message) -> bytes:
        inner = self._safe(lambda: part.get_payload(), None)
        if isinstance(inner, list) and inner and isinstance(inner[0], Message):
            first = inner[0]
            data = self._safe(lambda: first.as_bytes(policy=policy.SMTP), None)
            if isinstance(data, bytes):
                return data
        return self._payload(part)

    def _header_blocks(self, part: Message) -> bytes:
        blocks = self._safe(lambda: part.get_payload(), None)
        out: list[bytes] = []
        for block in blocks if isinstance(blocks, list) else []:
            if isinstance(block, Message):
                data = self._safe(partial(block.as_bytes, policy=policy.compat32), None)
                if isinstance(data, bytes):
                    out.append(data.rstrip(b"\r\n") + b"\n")
        return b"\n".join(out)

    def _text_of(self, part: Message) -> str:
        data = self._payload(part)
        charset = self._safe(lambda: part.get_content_charset(), None)
        text, note = decode_text(data, charset if isinstance(charset, str) else None)
        if note:
            self.defects.append(f"part {self.parts_seen}: {note}")
        return text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")

    def _attach(self, part: Message, ctype: str, data: bytes, *, fallback: str = "") -> None:
        raw_name = self._safe_filename(part)
        if ctype in _REPORT_TYPES and not raw_name:
            fallback = ctype.split("/")[1] + ".txt"
        filename = sanitise_filename(raw_name, fallback=fallback or "attachment.bin")
        size = len(data)
        if size > self.limits.max_attachment_bytes:
            self.defects.append(
                f"attachment {filename!r} ({size} bytes) over the per-file limit; dropped"
            )
            self.dropped.append(
                DroppedAttachment(filename, size, self.limits.max_attachment_bytes, per_file=True)
            )
            return
        if self.attachment_bytes + size > self.limits.max_total_attachment_bytes:
            self.defects.append(f"attachment {filename!r} over the per-message limit; dropped")
            self.dropped.append(
                DroppedAttachment(
                    filename, size, self.limits.max_total_attachment_bytes, per_file=False
                )
            )
            return
        self.attachment_bytes += size
        cid = self._safe(lambda: part.get("content-id"), None)
        content_id = None
        if cid is not None:
            ids = _message_ids(str(cid)) or (one_line(str(cid)).strip("<>"),)
            content_id = ids[0] or None
        disposition = self._safe(lambda: part.get_content_disposition(), None)
        self.attachments.append(
            ParsedAttachment(
                filename=filename,
                content_type=ctype,
                data=data,
                sha256=hashlib.sha256(data).hexdigest(),
                inline=disposition == "inline" or (disposition is None and content_id is not None),
                content_id=content_id,
                active=is_active(filename, ctype),
            )
        )

    def _safe(self, fn: Callable[[], T], default: T) -> T:
        """Run one accessor of the email package; its bugs become a defect, not a crash."""
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - see docstring
            self.defects.append(f"part {self.parts_seen}: {type(exc).__name__} reading part")
            return default


# What the SMTP edge reads of the headers (gateway/mail/headers.py) is read as the parser reads it.
message_ids = _message_ids
parse_addresses = _parse_addresses
