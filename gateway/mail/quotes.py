"""Strip quoted history and signatures from a reply, keeping the sender's new words.

Written for the gateway rather than taken from a library: on the corpus replies it scores
higher than mail-parser-reply (docs/QUOTES.md, benchmarks/quote_accuracy.py). It scans the
text once, top to bottom, in linear time (a 750 kB quote costs milliseconds).
"""

from __future__ import annotations

import re

# Verbs that end an attribution line ("On <date>, <name> wrote:") in the languages mail
# clients ship; Gmail, Apple Mail, Thunderbird and Outlook mobile all use this shape.
_VERBS = (
    r"wrote|writes|schrieb|a\s+écrit|escribió|escribio|ha\s+scritto|scrisse|escreveu|"
    r"schreef|skrev|skrifaði|kirjoitti|napisał|napisała|napisal|napsal|napsala|написал|"
    r"написала|написал\(а\)|пишет|написав|έγραψε|yazdı|írta|rakstīja|rašė|kirjutas|"
    r"a\s+scris|scrie|napisao|napisala|je\s+napisal|va\s+escriure|写道|寫道|님이\s*작성"
)
_ENDS_WITH_VERB = re.compile(rf"(?:{_VERBS})\s*:?\s*$", re.IGNORECASE)
# Gmail in many locales (ru, de, nl, ja …) ends the line with "<address>:" instead of a verb.
_ENDS_WITH_ADDRESS = re.compile(r"@[\w.-]+\s*[>)\]]\s*:\s*$")
# An attribution names a moment or a mailbox; prose that merely ends in "wrote:" does not.
_HAS_DATE_OR_ADDRESS = re.compile(r"\d{1,2}[:.]\d{2}|@|\b(?:19|20)\d{2}\b")
_MAX_ATTRIBUTION = 400

# "-----Original Message-----" and its translations (Outlook, Lotus Notes, Zimbra, mobile).
_ORIGINAL_MESSAGE = re.compile(
    r"^[\s*_=-]*(?:original\s+message|ursprüngliche\s+nachricht|originalnachricht|"
    r"oprindelig\s+(?:besked|meddelelse)|message\s+d'origine|message\s+original|"
    r"mensaje\s+original|messaggio\s+originale|mensagem\s+original|oorspronkelijk\s+bericht|"
    r"originalmeddelande|ursprungligt\s+meddelande|opprinnelig\s+melding|alkuperäinen\s+viesti|"
    r"původní\s+zpráva|oryginalna\s+wiadomość|wiadomość\s+oryginalna|исходное\s+сообщение|"
    r"пересланное\s+сообщение|eredeti\s+üzenet|orijinal\s+mesaj|αρχικό\s+μήνυμα|"
    r"reply\s+message|原始邮件|元のメッセージ)[\s*_=:-]*$",
    re.IGNORECASE,
)
# A forward carries someone else's message on purpose: it is content, not history.
_FORWARD_MARKER = re.compile(
    r"^[\s*_=-]*(?:forwarded\s+message|begin\s+forwarded\s+message|weitergeleitete\s+nachricht|"
    r"message\s+transféré|mensaje\s+reenviado|messaggio\s+inoltrato|mensagem\s+encaminhada|"
    r"doorgestuurd\s+bericht|videresendt\s+meddelelse|vidarebefordrat\s+meddelande)"
    r"[\s*_=:-]*$",
    re.IGNORECASE,
)
_RULE_LINE = re.compile(r"^\s*(?:-{5,}|_{5,}|={5,})\s*$")
_UNDERSCORE_SEPARATOR = re.compile(r"^\s*_{8,}\s*$")  # Outlook and Mailman footers
# RFC 3676 §4.3: "-- " alone on a line starts a signature; many clients drop the space.
_SIGNATURE_SEPARATOR = re.compile(r"^--\s?$")
_MOBILE_SIGNATURE = re.compile(
    r"^\s*(?:sent\s+from\s+my\s|sent\s+from\s+mail\s+for|sent\s+from\s+(?:outlook|yahoo)|"
    r"get\s+outlook\s+for|sent\s+via\s|von\s+meinem\s.*gesendet|gesendet\s+von\s+meinem|"
    r"envoyé\s+de\s+mon|envoyé\s+depuis\s+mon|enviado\s+desde\s+mi|enviado\s+do\s+meu|"
    r"inviato\s+da(?:l\s+mio)?\s|verzonden\s+(?:met|vanaf)\s|skickat\s+från\s|sendt\s+fra\s+min|"
    r"lähetetty\s+(?:iphonesta|laitteesta)|wysłane\s+z\s|отправлено\s+с\s)",
    re.IGNORECASE,
)
_MAX_SIGNATURE_LINE = 100

# Header lines of a quoted message as Outlook, Zimbra and others write them, localised.
_FROM_FIELD = (
    r"from|von|de|fra|från|da|van|od|от|lähettäjä|feladó|kimden|από|frá|nuo|no|saatja|发件人|差出人"
)
_OTHER_FIELDS = (
    r"sent|date|to|cc|subject|gesendet|datum|an|betreff|envoyé|date\s+d'envoi|à|objet|"
    r"dato|til|emne|sendt|skickat|till|ämne|inviato|data|a|oggetto|enviado|fecha|para|asunto|"
    r"assunto|verzonden|aan|onderwerp|wysłano|do|temat|отправлено|дата|кому|тема|lähetetty|"
    r"vastaanottaja|aihe|elküldve|címzett|tárgy|gönderildi|kime|konu|发送时间|收件人|主题|"
    r"送信日時|宛先|件名"
)
_FROM_LINE = re.compile(rf"^\s*\*?\s*(?:{_FROM_FIELD})\s*\*?\s*:\s*\*?\s*\S", re.IGNORECASE)
_OTHER_LINE = re.compile(rf"^\s*\*?\s*(?:{_OTHER_FIELDS})\s*\*?\s*:", re.IGNORECASE)

# Sign-offs that end a message; "Thanks," is left alone because it is often the message.
_VALEDICTION = re.compile(
    r"^\s*(?:(?:best|kind|warm|warmest|many)\s+regards|regards|best\s+wishes|best|cheers|"
    r"sincerely|yours\s+(?:sincerely|truly|faithfully)|respectfully|cordialement|"
    r"bien\s+cordialement|bien\s+à\s+vous|mit\s+freundlichen\s+grüßen|mit\s+freundlichen\s+grüssen|"
    r"freundliche\s+grüße|viele\s+grüße|beste\s+grüße|liebe\s+grüße|lg|mfg|vg|saludos|"
    r"saludos\s+cordiales|un\s+saludo|atentamente|cordiali\s+saluti|distinti\s+saluti|"
    r"un\s+saluto|saluti|met\s+vriendelijke\s+groet(?:en)?|vriendelijke\s+groet(?:en)?|groeten|"
    r"med\s+vänlig\s+hälsning|vänliga\s+hälsningar|med\s+venlig\s+hilsen|venlig\s+hilsen|"
    r"med\s+vennlig\s+hilsen|mvh|ystävällisin\s+terveisin|terveisin|pozdrawiam|"
    r"z\s+poważaniem|с\s+уважением|atenciosamente|cumprimentos)\s*[,.!]?\s*$",
    re.IGNORECASE,
)
_MAX_SIGNATURE_LINES = 5
# "-Abhishek" or "- Jane Doe" alone at the very end: an informal signature.
_DASH_NAME = re.compile(r"^\s*-\s?[^\W\d_][\w.'-]*(?:\s[^\W\d_][\w.'-]*){0,2}\s*$")


def _is_quoted(line: str) -> bool:
    # ">:" alone is the wrapped tail of "… <addr@example.com" + ">:", not a quote.
    stripped = line.strip()
    return stripped.startswith(">") and stripped.replace(" ", "") != ">:"


def _attribution_span(lines: list[str], i: int) -> int:
    """How many lines (1–3) starting at `i` form an attribution line; 0 if none.

    Clients wrap long attributions, so up to three lines are joined. The first line of a
    wrapped attribution carries the date or the address; a line without one, or one that
    ends a sentence, is the reply's own last line ("Hi,") above a one-line attribution.
    """
    if not lines[i].strip() or _is_quoted(lines[i]):
        return 0
    for span in range(1, 4):
        if i + span > len(lines):
            return 0
        chunk = lines[i : i + span]
        if span > 1 and (not chunk[-1].strip() or _is_quoted(chunk[-1])):
            return 0
        joined = " ".join(part.strip() for part in chunk)
        if len(joined) > _MAX_ATTRIBUTION:
            return 0
        if _is_attribution(joined):
            return span
        if span == 1 and not _could_start_attribution(lines[i]):
            return 0
    return 0


def _could_start_attribution(line: str) -> bool:
    stripped = line.strip()
    return bool(_HAS_DATE_OR_ADDRESS.search(stripped)) and stripped[-1] not in ".!?;,"


def _is_attribution(joined: str) -> bool:
    if not _HAS_DATE_OR_ADDRESS.search(joined):
        return False
    return bool(_ENDS_WITH_VERB.search(joined) or _ENDS_WITH_ADDRESS.search(joined))


def _next_nonblank(lines: list[str], i: int) -> int:
    while i < len(lines) and not lines[i].strip():
        i += 1
    return i


def _starts_header_block(lines: list[str], i: int) -> bool:
    """A "From:" line followed closely by at least two more header lines (Sent, To …)."""
    if not _FROM_LINE.match(lines[i]):
        return False
    others = sum(1 for line in lines[i + 1 : i + 7] if _OTHER_LINE.match(line))
    return others >= 2


def _is_history_start(lines: list[str], i: int) -> bool:
    """Whether quoted history or a signature begins at line `i` (everything below goes)."""
    line = lines[i]
    if _SIGNATURE_SEPARATOR.match(line) or _UNDERSCORE_SEPARATOR.match(line):
        return True
    if _ORIGINAL_MESSAGE.match(line):
        return True
    if len(line) <= _MAX_SIGNATURE_LINE and _MOBILE_SIGNATURE.match(line):
        return True
    if _RULE_LINE.match(line):
        j = _next_nonblank(lines, i + 1)
        return j < len(lines) and _starts_header_block(lines, j)
    return _starts_header_block(lines, i)


def _trim_signature(kept: list[str]) -> list[str]:
    """Drop a closing sign-off ("Regards,\\nJane Doe\\nCEO") or an informal "-Jane"."""
    while kept and not kept[-1].strip():
        kept.pop()
    nonblank = [k for k, line in enumerate(kept) if line.strip()]
    tail = nonblank[-(_MAX_SIGNATURE_LINES + 1) :]
    for k in tail:
        if _VALEDICTION.match(kept[k]) and k != nonblank[0]:
            after = [line for line in kept[k + 1 :] if line.strip()]
            if all(len(line.strip()) <= 60 for line in after):
                return kept[:k]
    if (
        len(nonblank) > 1
        and _DASH_NAME.match(kept[nonblank[-1]])
        and not kept[nonblank[-1] - 1].strip()
    ):
        return kept[: nonblank[-1]]
    return kept


def strip_reply(text: str) -> str:
    """The new text of a reply: quoted history, attribution lines and signature removed.

    - Attribution ("On … wrote:", "Am … schrieb …:", "<addr>:" in many languages): if quoted
      lines follow, the reply may be interleaved, so only the attribution and the quoted
      lines go; otherwise (quote markers lost, e.g. from HTML) everything below it goes.
    - "-----Original Message-----" (and translations), Outlook "From:/Sent:/To:" blocks,
      "____" separators, "-- " signatures and "Sent from my iPhone" lines cut the rest.
    - Lines starting with ">" are dropped wherever they are.
    - A forwarded message ("---------- Forwarded message ----------") is kept whole.
    Returns "" when the text was nothing but history; the caller keeps the full text too.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    kept: list[str] = []
    in_quote = False  # inside a quoted block introduced by an attribution line
    after_quoted_line = False
    i = 0
    while i < len(lines):
        line = lines[i]
        if _FORWARD_MARKER.match(line):
            kept.extend(lines[i:])
            break
        if _is_history_start(lines, i):
            break
        span = _attribution_span(lines, i)
        if span:
            j = _next_nonblank(lines, i + span)
            if j < len(lines) and _is_quoted(lines[j]):
                in_quote, i = True, j
                continue
            break
        if _is_quoted(line):
            after_quoted_line = True
        elif not line.strip():
            after_quoted_line = False
            kept.append(line)
        elif not (in_quote and after_quoted_line):
            # A non-blank line right under a quoted one, inside a quote, is the quoted
            # line's own wrapped tail (clients re-wrap without re-adding ">").
            kept.append(line)
        i += 1
    kept = _trim_signature(kept)
    return "\n".join(kept).strip("\n").rstrip()
