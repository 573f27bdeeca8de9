"""Turn mail HTML into readable plain text, and sanitise HTML before it is kept."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import nh3

# Elements whose start and end each begin a new line of text (HTML Living Standard,
# "block-level" content as mail clients use it).
_BLOCK_TAGS = frozenset(
    {
        "address", "article", "aside", "blockquote", "center", "dd", "div", "dl", "dt",
        "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5",
        "h6", "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section", "table",
        "tbody", "tfoot", "thead", "tr", "ul",
    }
)  # fmt: skip
# Paragraph-like elements get a blank line around them, as a reader would see them.
_PARAGRAPH_TAGS = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "table"})
# Content of these is never text a person wrote (or is invisible in a mail client).
_DROP_TAGS = frozenset({"script", "style", "head", "title", "template", "noscript", "object"})
_VOID_TAGS = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
)

_SPACES = re.compile(r"[ \t\f\v\r\n\u00a0\u200b]+")
_MANY_BLANK_LINES = re.compile(r"\n{3,}")


class _TextExtractor(HTMLParser):
    """Collects text in reading order; newlines are emitted as markers and resolved later."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self._drop_depth = 0
        self._pre_depth = 0
        self._list_stack: list[list[int]] = []  # per open list: [is_ordered, counter]
        self._links: list[str | None] = []
        self._link_text: list[list[str]] = []

    # "\x00N", "\x00P" and "\x00L" mark a soft line break (ignored at the start of a line),
    # a paragraph break, and a hard line break (<br>, or a newline inside <pre>); NUL never survives into the
    # text itself (it is removed from input data below).
    def _newline(self) -> None:
        self.out.append("\x00N")

    def _paragraph(self) -> None:
        self.out.append("\x00P")

    def _emit(self, text: str) -> None:
        if self._link_text:
            self._link_text[-1].append(text)
        self.out.append(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _DROP_TAGS:
            if tag not in _VOID_TAGS:
                self._drop_depth += 1
            return
        if self._drop_depth:
            return
        if tag == "br":
            self.out.append("\x00L")
        elif tag in ("ul", "ol"):
            self._list_stack.append([1 if tag == "ol" else 0, 0])
            self._newline()
        elif tag == "li":
            self._newline()
            if self._list_stack and self._list_stack[-1][0]:
                self._list_stack[-1][1] += 1
                self._emit(f"{self._list_stack[-1][1]}. ")
            else:
                self._emit("- ")
        elif tag == "pre":
            self._pre_depth += 1
            self._newline()
        elif tag in _PARAGRAPH_TAGS:
            self._paragraph()
        elif tag in _BLOCK_TAGS:
            self._newline()
        elif tag in ("td", "th"):
            self._emit(" ")
        elif tag == "a":
            href = dict(attrs).get("href")
            self._links.append(href)
            self._link_text.append([])

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID_TAGS:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _DROP_TAGS:
            if self._drop_depth:
                self._drop_depth -= 1
            return
        if self._drop_depth:
            return
        if tag in ("ul", "ol"):
            if self._list_stack:
                self._list_stack.pop()
            self._newline()
        elif tag == "pre":
            self._pre_depth = max(0, self._pre_depth - 1)
            self._newline()
        elif tag in _PARAGRAPH_TAGS:
            self._paragraph()
        elif tag in _BLOCK_TAGS:
            self._newline()
        elif tag == "a" and self._links:
            href = self._links.pop()
            text = "".join(self._link_text.pop()).strip()
            if self._link_text:  # nested anchors: the outer one also saw this text
                self._link_text[-1].append(text)
            if href and _shows_url(href, text):
                self.out.append(f" ({href.strip()})")

    def handle_data(self, data: str) -> None:
        if self._drop_depth:
            return
        data = data.replace("\x00", "")
        if self._pre_depth:
            # Keep preformatted line structure; markers carry the line breaks.
            lines = data.replace("\r\n", "\n").replace("\r", "\n").split("\n")
            for i, line in enumerate(lines):
                if i:
                    self.out.append("\x00L")
                self._emit(line.replace(" ", "\u00a0") if line else "")
        else:
            self._emit(_SPACES.sub(" ", data))


def _shows_url(href: str, text: str) -> bool:
    """Whether a link's target adds information the reader would not see in its text."""
    target = href.strip()
    if not target or target.startswith("#") or target.lower().startswith(("javascript:", "cid:")):
        return False
    bare = re.sub(r"^(mailto:|https?://)", "", target, flags=re.IGNORECASE).rstrip("/")
    return bool(text) and bare.lower() not in text.lower()


def html_to_text(html: str) -> str:
    """Render HTML as plain text: blocks and <br> become line breaks, lists get bullets,
    links read "text (url)", scripts and styles are dropped and entities unescaped."""
    parser = _TextExtractor()
    try:
        parser.feed(html)
        parser.close()
    except (AssertionError, ValueError, RecursionError):
        # html.parser is lenient but has raised on pathological markup in the past
        # (bpo-41989); keep what was collected so far rather than lose the body.
        pass
    lines: list[str] = []
    current: list[str] = []
    for piece in parser.out:
        if piece == "\x00L" or (piece in ("\x00N", "\x00P") and "".join(current).strip()):
            lines.append("".join(current))
            current = []
        if piece == "\x00P" and lines and lines[-1].strip():
            lines.append("")
        elif not piece.startswith("\x00"):
            current.append(piece)
    lines.append("".join(current))
    # Only ASCII spaces are trimmed here: the no-break spaces that remain are <pre> indentation.
    cleaned = [re.sub(r" {2,}", " ", ln).strip(" ").replace("\u00a0", " ").rstrip() for ln in lines]
    text = "\n".join(cleaned)
    return _MANY_BLANK_LINES.sub("\n\n", text).strip()


# Tags a ticket view may show. nh3 (ammonia) already drops scripts, event handlers and
# javascript: URLs; we additionally keep no forms, no embedded frames and no remote styles.
_ALLOWED_TAGS = frozenset(nh3.ALLOWED_TAGS) - {"form", "input", "button", "textarea", "select"}
_ALLOWED_URL_SCHEMES = frozenset({"http", "https", "mailto", "cid"})


def sanitise_html(html: str) -> str:
    """Return HTML that is safe to store and show: no scripts, handlers, styles or forms."""
    return nh3.clean(
        html,
        tags=set(_ALLOWED_TAGS),
        url_schemes=set(_ALLOWED_URL_SCHEMES),
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    )
