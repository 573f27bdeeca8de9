"""strip_reply keeps the sender's new words and drops quoted history and signatures."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from gateway.mail.quotes import strip_reply

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.quote_accuracy import Case, is_correct, load_cases, normalise

CASES = load_cases()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.path)
def test_corpus_reply_text(case: Case) -> None:
    """Every corpus reply with a known reply_text comes out as its source project expects."""
    got = strip_reply(case.body)
    assert is_correct(case, got), normalise(got)[:200]


def test_gmail_attribution_and_quote() -> None:
    """An "On … wrote:" line and the quoted lines under it go."""
    text = "Sounds good.\n\nOn Mon, Apr 2, 2012 at 6:26 PM, Megan <m@example.com> wrote:\n\n> Hi\n> there\n"
    assert strip_reply(text) == "Sounds good."


def test_interleaved_reply_keeps_answers() -> None:
    """Answers written between quoted lines stay; the quoted lines go."""
    text = (
        "Hi,\nOn Tue, 2011-03-01 at 18:02 +0530, Ann wrote:\n> Question one?\n\n"
        "Answer one.\n\n> Question two?\n\nAnswer two.\n"
    )
    assert strip_reply(text) == "Hi,\n\nAnswer one.\n\n\nAnswer two."


def test_wrapped_german_attribution() -> None:
    """A Gmail attribution wrapped over two lines in German ends the reply."""
    text = "Danke!\n\nAm Mo., 3. Feb. 2020 um 10:12 Uhr schrieb Max Muster <\nmax@example.de>:\n\nalter Text\n"
    assert strip_reply(text) == "Danke!"


def test_outlook_header_block() -> None:
    """An Outlook "From:/Sent:/To:/Subject:" block and all below it go."""
    text = (
        "Please reset it.\n\n________________________________\nFrom: IT <it@example.com>\n"
        "Sent: Monday, 1 May 2023 10:00\nTo: Me\nSubject: Password\n\nOld text"
    )
    assert strip_reply(text) == "Please reset it."


def test_localised_outlook_block_without_separator() -> None:
    """A French Outlook header block ("De : … Envoyé : … À :") is history too."""
    text = "Merci.\n\nDe : Jean <j@example.fr>\nEnvoyé : lundi 1 mai 2023 10:00\nÀ : Marie\nObjet : Test\n\nAncien"
    assert strip_reply(text) == "Merci."


def test_original_message_separator() -> None:
    """The "-----Original Message-----" separator cuts the rest."""
    assert strip_reply("Done.\n\n-----Original Message-----\nFrom: a\nold") == "Done."


def test_signature_separator_and_mobile_footer() -> None:
    """RFC 3676 "-- " signatures and "Sent from my iPhone" are removed."""
    assert strip_reply("Fixed now.\n\n-- \nJane Doe\nIT") == "Fixed now."
    assert strip_reply("Fixed now.\n\nSent from my iPhone") == "Fixed now."


def test_regards_signoff_removed_but_thanks_kept() -> None:
    """A closing "Regards,\\nName" goes; "Thanks,\\nName" is part of the message."""
    assert strip_reply("Can you help?\n\nRegards,\n\nJohn Doe\nCEO") == "Can you help?"
    assert strip_reply("I am fine.\n\nThanks,\nAlex") == "I am fine.\n\nThanks,\nAlex"


def test_prose_starting_with_on_is_not_an_attribution() -> None:
    """Prose like "On your host you can run:" is not a quote header."""
    text = "On your remote host you can run:\n\n    telnet 127.0.0.1 52698\n"
    assert strip_reply(text) == text.rstrip()


def test_forwarded_message_is_kept() -> None:
    """A forward's content is the point of the mail, so it stays."""
    text = "FYI\n\n---------- Forwarded message ---------\nFrom: A <a@example.com>\nDate: Mon\nTo: B\nSubject: S\n\nBody"
    assert strip_reply(text) == text


def test_only_quote_gives_empty_text() -> None:
    """A mail that is nothing but quoted text has no new text."""
    assert strip_reply("> old\n> text\n") == ""


def test_huge_quote_is_linear() -> None:
    """A 2 MB quoted body is processed quickly (no regex backtracking blow-up)."""
    text = "New words\n\n" + "> " + "x" * 200 + "\n" * 1 + ("> quoted line\n" * 100_000)
    start = time.perf_counter()
    assert strip_reply(text) == "New words"
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # mail.ru: a bare address ends the attribution, a time of day dates it
        (
            "Спасибо.\n\nПонедельник, 2 ноября 2026, 9:14 +03:00 от it@acme.example:\n\nСтарое",
            "Спасибо.",
        ),
        # an app footer with its download link appended
        ("Thanks\n\nGet Outlook for iOS<https://aka.ms/o0ukef>\n____\nFrom: a\nold", "Thanks"),
        # French webmail block with an empty field, under a "====" rule
        (
            (
                'Merci.\n\n====\n\nMessage du : 12/12/2016 13:20\nDe : "Q" <q@example.com>\n'
                "A : m@example.fr\nCopie à : \nSujet : Test\n\nAncien"
            ),
            "Merci.",
        ),
        # a line ending in ":" above a quote, with a verb: the attribution of an unknown client
        ("Anna wrote:\n> Floor?\n3rd floor\n", "3rd floor"),
        # nothing but an attribution and a quote: empty, the caller has the full text
        ("On Mon, 2 Nov 2026 at 09:14, A <a@example.com> wrote:\n> only old\n", ""),
    ],
)
def test_issue16_kinds(text: str, expected: str) -> None:
    """Issue 16 kinds: bare-address attributions, linked app footers, empty header fields."""
    assert strip_reply(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Please write to bob@example.com:\n\nhe knows the details.",
        "I sent it from my iPhone yesterday.\nIs that a problem?",
        "See below:\n\n> quoted question\n\nMy answer.",
    ],
)
def test_issue16_prose_is_kept(text: str) -> None:
    """Prose that looks a little like history (an address and a colon, "sent from my
    iPhone" in a sentence, "See below:") is the sender's own text and stays."""
    got = strip_reply(text)
    for line in text.splitlines():
        if line.strip() and not line.startswith(">"):
            assert line in got


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Chinese Gmail/QQ: full-width colon after 写道
        ("好的。\n\nXYZ <c@zyx.example>于2020年3月9日 周一下午9:10写道：\n\n旧文", "好的。"),
        # the verb before the date (Finnish, Hungarian)
        ("Kiitos.\n\nAsiakaspalvelu kirjoitti 20.05.2019 kello 10:26:\n\nvanha", "Kiitos."),
        (
            "Rendben.\n\nÜgyfél <s@example.hu> ezt írta (időpont: 2026. aug. 16., Ke 12:27):\nrégi",
            "Rendben.",
        ),
        # Czech/Polish Gmail "napsal(a):" wrapped under the address
        ("Díky.\n\nDne po 15. led. 2025 17:03 Anna <a@example.cz>\nnapsal(a):\n\n> staré", "Díky."),
        # sign-offs in more languages, "/John", a rule above a short signature block
        ("Hej,\n\nSvar.\n\nKh\nPeter", "Hej,\n\nSvar."),
        ("Hello Anna,\n\nI am busy this year.\n\n/John", "Hello Anna,\n\nI am busy this year."),
        (
            "安安：\n\n已经整理好了。\n\n——————————————\n\n小满\n活动协调人",
            "安安：\n\n已经整理好了。",
        ),
    ],
)
def test_issue16_more_kinds(text: str, expected: str) -> None:
    """Kinds found on other projects' fixtures: CJK colons, verb-first attributions, sign-offs."""
    assert strip_reply(text) == expected
