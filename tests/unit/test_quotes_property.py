"""Issue 16: whatever the sender wrote survives quote stripping, whatever quote comes with it."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.mail.quotes import strip_reply

# Prose lines: letters in several scripts, digits, spaces and sentence punctuation — no ">",
# ":" or "@" so a line is never itself an attribution, a header or a quote.
_PROSE = st.text(
    alphabet=st.sampled_from(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZäöüéçñøжяфあ漢 0123456789,.!?'"
    ),
    min_size=1,
    max_size=70,
).filter(lambda s: any(ch.isalpha() for ch in s))
_TEXT = st.lists(_PROSE, min_size=1, max_size=6).map("\n".join)
_ATTRIBUTION = st.sampled_from(
    [
        "On Mon, 2 Nov 2026 at 09:14, IT Desk <it@acme.example> wrote:",
        "Am 02.11.2026 um 09:14 schrieb IT Desk:",
        "Le 2 nov. 2026 à 09:14, IT Desk <it@acme.example> a écrit :",
        '02.11.2026, 09:14, "IT Desk" <it@acme.example>:',
        "IT Desk wrote:",
        "",
    ]
)
_QUOTE = st.tuples(_ATTRIBUTION, st.lists(_PROSE, min_size=1, max_size=8)).map(
    lambda aq: (aq[0] + "\n" if aq[0] else "") + "\n".join("> " + q for q in aq[1])
)


@settings(max_examples=300, deadline=None)
@given(text=_TEXT, quote=_QUOTE)
def test_top_posted_text_survives_any_quote(text: str, quote: str) -> None:
    """Text above a quote block comes out exactly as the text alone does, and never empty."""
    alone = strip_reply(text)
    assert alone.strip()
    assert strip_reply(text + "\n\n" + quote) == alone


@settings(max_examples=300, deadline=None)
@given(text=_TEXT, quote=_QUOTE)
def test_bottom_posted_text_survives_any_quote(text: str, quote: str) -> None:
    """Text under a quote block (after a blank line) is kept as the text alone is."""
    assert strip_reply(quote + "\n\n" + text) == strip_reply(text)


@settings(max_examples=300, deadline=None)
@given(text=_TEXT, quote=_QUOTE)
def test_text_right_under_a_quote_is_never_lost(text: str, quote: str) -> None:
    """Text directly under the last quoted line is never stored empty."""
    assert strip_reply(quote + "\n" + text).strip()
