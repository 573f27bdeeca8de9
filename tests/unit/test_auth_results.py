"""The DMARC verdict comes from the dmarc resinfo of our MTA's header, never from sender text."""

from __future__ import annotations

from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.mail.auth_results import MAX_PARSED_CHARS, dmarc_verdict
from gateway.mail.parse import parse_mail
from gateway.mail.translate import TranslateContext, translate

MX = "mx.acme.example"
TRUSTED = (MX,)


@pytest.mark.parametrize(
    ("headers", "verdict"),
    [
        # The two attacks of issue 12: "dmarc=pass" in the envelope sender and in a comment.
        (
            [
                (
                    f"{MX}; spf=fail smtp.mailfrom=dmarc=pass@evil.example; dmarc=fail (p=reject) "
                    "header.from=acme.example"
                )
            ],
            "fail",
        ),
        (
            [f"{MX}; dkim=none (dmarc=pass was not checked); dmarc=fail header.from=acme.example"],
            "fail",
        ),
        # Comments nest; the inner ")" does not end the outer one.
        ([f"{MX} (a (b (dmarc=pass) c) d); dmarc=fail (x (dmarc=pass)) header.from=a"], "fail"),
        ([f"{MX}; dkim=pass (dmarc=fail (nested) still a comment); dmarc=pass"], "pass"),
        # An escaped parenthesis inside a comment does not close it.
        ([rf"{MX}; spf=none (\) dmarc=pass); dmarc=fail"], "fail"),
        # Quoted strings: as a property value, as a quoted local-part, as a reason.
        ([f'{MX}; spf=fail smtp.mailfrom="dmarc=pass"; dmarc=fail'], "fail"),
        ([f'{MX}; spf=fail smtp.mailfrom="x; dmarc=pass"@evil.example; dmarc=fail'], "fail"),
        ([f'{MX}; dmarc=fail reason="dmarc=pass" header.from=acme.example'], "fail"),
        ([f'{MX}; dkim=fail reason="bad; dmarc=pass"; dmarc=none'], "none"),
        # Another method's property value naming dmarc.
        ([f"{MX}; spf=pass policy.dmarc=pass; dmarc=fail"], "fail"),
        # A version number after the authserv-id, with or without a comment.
        ([f"{MX} 1; dmarc=pass header.from=acme.example"], "pass"),
        ([f"{MX} (our MX) 1 (v1); dmarc=fail"], "fail"),
        # The authserv-id and the method compare case-insensitively; the result comes lower-case.
        (["MX.Acme.Example; DMARC=Pass header.from=acme.example"], "pass"),
        ([f"{MX}; dmarc=temperror"], "temperror"),
        # Folded over lines as it arrives.
        ([f"{MX};\r\n\tspf=pass smtp.mailfrom=a@b;\r\n\tdmarc=pass header.from=b"], "pass"),
        # Only "none": no method was applied.
        ([f"{MX}; none"], "none"),
        ([f"{MX} 1; none (nothing checked, dmarc=pass)"], "none"),
        # A trusted header without a dmarc resinfo.
        ([f"{MX}; spf=pass smtp.mailfrom=a@acme.example; dkim=pass header.d=acme.example"], "none"),
    ],
)
def test_verdict_of_one_trusted_header(headers: list[str], verdict: str) -> None:
    """Only the result of the method `dmarc` counts; comments and values never do."""
    assert dmarc_verdict(headers, TRUSTED) == verdict


def test_topmost_trusted_header_decides_below_untrusted_ones() -> None:
    """Untrusted headers above ours are skipped, and a trusted-looking one below ours is ignored."""
    headers = [
        "relay.partner.example; dmarc=pass header.from=acme.example",
        f"{MX}.evil.example; dmarc=pass",  # names our id, but as part of another one
        f"evil.example (copied from {MX}); dmarc=pass",
        f"{MX}; spf=fail smtp.mailfrom=acme.example; dmarc=fail header.from=acme.example",
        f"{MX}; dmarc=pass header.from=acme.example",  # the sender's own, under ours
    ]
    assert dmarc_verdict(headers, TRUSTED) == "fail"
    assert dmarc_verdict(headers[:3], TRUSTED) == "none"
    assert dmarc_verdict(headers[4:], TRUSTED) == "pass"


def test_any_of_several_trusted_ids_is_ours() -> None:
    """Each configured id is trusted; the topmost header with any of them decides."""
    headers = ["b.acme.example; dmarc=fail", "a.acme.example; dmarc=pass"]
    assert dmarc_verdict(headers, ("a.acme.example", "B.ACME.example")) == "fail"
    assert dmarc_verdict(headers, ("a.acme.example",)) == "pass"


def test_no_trusted_ids_means_no_check() -> None:
    """Without configured ids nothing is checked: None, whatever the headers say."""
    assert dmarc_verdict([f"{MX}; dmarc=fail"], ()) is None
    assert dmarc_verdict([], ()) is None


def test_no_header_or_no_trusted_header_is_none() -> None:
    """A mail without our MTA's header is not authenticated."""
    assert dmarc_verdict([], TRUSTED) == "none"
    assert dmarc_verdict(["other.example; dmarc=pass"], TRUSTED) == "none"
    assert dmarc_verdict([f"{MX}; dmarc=pass"], ("", "  ")) == "none"


@pytest.mark.parametrize(
    "header",
    [
        f"{MX}; dmarc=pass (unclosed comment",
        f"{MX}; dmarc=pass (a (b) c",
        f"{MX} 2; dmarc=pass",  # a version this grammar does not define
        f'"{MX}"; dmarc=pass',
        f"{MX}; dmarc=",
        f"{MX}; dmarc=pass; ;",
        f"{MX}; dmarc=pass (" + "(" * 5000 + ")" * 5001,  # deeper than the parser recurses
        f"{MX}; dmarc=pass" + " header.from=acme.example" * (MAX_PARSED_CHARS // 20),
        f"{MX}",
        f"{MX};",
    ],
)
def test_unparseable_trusted_header_is_none_even_with_pass_below(header: str) -> None:
    """A header naming our id that cannot be read decides "none", never "pass"."""
    assert dmarc_verdict([header], TRUSTED) == "none"
    assert dmarc_verdict([header, f"{MX}; dmarc=pass"], TRUSTED) == "none"


def test_unparseable_header_without_our_id_is_skipped() -> None:
    """Broken headers from elsewhere (e.g. without an authserv-id) do not hide ours."""
    headers = [
        "spf=pass (sender IP is 192.0.2.1) smtp.mailfrom=x; dmarc=pass (unclosed",
        f"{MX}; dmarc=fail",
    ]
    assert dmarc_verdict(headers, TRUSTED) == "fail"


def test_smuggled_resinfo_does_not_outvote_the_real_one() -> None:
    """A sender's ")" that ends an MTA comment early adds a dmarc=pass; the real fail still wins."""
    header = (
        f'{MX}; spf=softfail (domain of "a)b;dmarc=pass (x"@evil.example designates 192.0.2.1 '
        "as permitted sender) smtp.mailfrom=evil.example; dmarc=fail (p=reject) "
        "header.from=acme.example"
    )
    assert dmarc_verdict([header], TRUSTED) == "fail"
    assert (
        dmarc_verdict([f"{MX}; dmarc=pass header.from=a; dmarc=pass header.from=b"], TRUSTED)
        == "pass"
    )
    assert (
        dmarc_verdict([f"{MX}; dmarc=pass header.from=a; dmarc=none header.from=b"], TRUSTED)
        == "none"
    )


def test_comment_inside_reason_is_refused_not_misread() -> None:
    """authres does not take a comment between `reason` and "=": the header counts as "none"."""
    assert dmarc_verdict([f'{MX}; dmarc=pass reason (dmarc=fail) = "ok"'], TRUSTED) == "none"


def test_translate_reads_the_parsed_mail_headers() -> None:
    """Through parse_mail and translate, the attack in a folded header stays "fail"."""
    raw = (
        "From: Boss <boss@acme.example>\r\nTo: it@tickets.acme.example\r\n"
        "Subject: Re: x\r\nMessage-ID: <m1@evil.example>\r\n"
        f"Authentication-Results: {MX};\r\n spf=fail smtp.mailfrom=dmarc=pass@evil.example;\r\n"
        " dmarc=fail (p=reject) header.from=acme.example\r\n"
        "Authentication-Results: evil.example; dmarc=pass\r\n\r\n#reject\r\n"
    ).encode()
    ctx = TranslateContext(
        own_domains=frozenset({"tickets.acme.example"}),
        loop_token="t",
        trusted_authserv_ids=TRUSTED,
    )
    cmd = translate(
        parse_mail(raw),
        envelope_from="dmarc=pass@evil.example",
        envelope_rcpts=["it@tickets.acme.example"],
        ctx=ctx,
    )
    assert cmd.dmarc == "fail"


# --- property tests ------------------------------------------------------------------------
#
# A header of our MTA is rendered from fixed parts (authserv-id, optional version, resinfos with
# properties). Every place where RFC 8601 allows CFWS may get a comment, every resinfo may get a
# reason and more properties, and all of that text carries "dmarc=pass" / "dmarc=fail"; none of
# it may move the verdict away from the real dmarc resinfo's result.
# One place is left out: a comment between `reason` and its "=" (authres refuses that header,
# which gives "none", see test_comment_inside_reason_is_refused_not_misread).

_CTEXT = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="()\\"),
    max_size=6,
)
_QTEXT = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters='"\\'),
    max_size=6,
)
_QUOTED_PAIR = st.characters(min_codepoint=0x21, max_codepoint=0x7E).map(lambda c: "\\" + c)
_ATEXT = st.text(alphabet="abcxyz0123456789-_+", min_size=1, max_size=5)
_PAYLOADS = ["dmarc=pass", "dmarc=fail", "DMARC = pass", "x; dmarc=pass; y"]


@cache
def _comment(payload: str) -> st.SearchStrategy[str]:
    """An RFC 5322 comment holding `payload`, with ctext, quoted pairs and nested comments."""
    leaf = st.one_of(st.just(payload), _CTEXT, st.just(" "), _QUOTED_PAIR)
    nested = st.recursive(
        leaf,
        lambda inner: st.lists(inner, max_size=3).map(lambda xs: "(" + " ".join(xs) + ")"),
        max_leaves=5,
    )
    return st.lists(nested, max_size=3).map(lambda xs: "(" + " ".join([*xs, payload]) + ")")


@cache
def _quoted(payload: str) -> st.SearchStrategy[str]:
    """An RFC 5322 quoted string holding `payload` (it has no `"` or `\\` to escape)."""
    piece = st.one_of(_QTEXT, st.just(" "), _QUOTED_PAIR)
    return st.tuples(piece, piece).map(lambda t: '"' + t[0] + payload + t[1] + '"')


@cache
def _pvalue(payload: str) -> st.SearchStrategy[str]:
    """A property value holding `payload`: local-part@domain, quoted string, or dotted atom."""
    atom = payload.replace(" ", "").replace(";", ".")  # unquoted, the value is one atom
    return st.one_of(
        st.tuples(_ATEXT, _ATEXT).map(lambda t: f"{t[0]}{atom}@{t[1]}.example"),
        st.just(f"{atom}@evil.example"),
        _quoted(payload),
        _quoted(payload).map(lambda q: q + "@evil.example"),
        _ATEXT.map(lambda a: f"{a}.{atom}"),
    )


_RESINFOS = (
    ("spf", "fail", (("smtp", "mailfrom", "mallory@evil.example"),)),
    ("dkim", "none", ()),
    ("dmarc", None, (("header", "from", "acme.example"),)),
    ("arc", "none", ()),
)


_GAP = object()  # a place where CFWS may stand


def _render(data: st.DataObject, verdict: str, payload: str, version: str | None) -> str:
    """Our MTA's header with dmarc=`verdict`, and sender-like text where `data` puts it."""
    out: list[object] = [_GAP, MX, _GAP]
    if version is not None:
        out += [" ", version, _GAP]
    for method, result, fixed in _RESINFOS:
        out += [";", _GAP, method, _GAP, "=", _GAP, result or verdict, _GAP]
        if data.draw(st.booleans()):
            reason = data.draw(_quoted(payload))
            out += [" reason", data.draw(st.sampled_from(["", " "])), "=", _GAP, reason, _GAP]
        props = list(fixed)
        for _ in range(data.draw(st.integers(0, 2))):
            ptype = data.draw(st.sampled_from(["smtp", "header", "policy", "body"]))
            name = data.draw(st.sampled_from(["mailfrom", "from", "dmarc", "helo", "d", "b"]))
            where = data.draw(st.integers(0, len(props)))
            props.insert(where, (ptype, name, data.draw(_pvalue(payload))))
        for ptype, name, value in props:
            out += [" ", ptype, _GAP, ".", _GAP, name, _GAP, "=", _GAP, value, _GAP]
    gaps = [i for i, part in enumerate(out) if part is _GAP]
    spaced = data.draw(st.lists(st.booleans(), min_size=len(gaps), max_size=len(gaps)))
    commented = data.draw(st.sets(st.sampled_from(gaps), max_size=5))
    for i, space in zip(gaps, spaced, strict=True):
        out[i] = " " + data.draw(_comment(payload)) + " " if i in commented else " " * space
    return "".join(str(part) for part in out)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    verdict=st.sampled_from(["pass", "fail", "none"]),
    payload=st.sampled_from(_PAYLOADS),
    version=st.sampled_from([None, "1"]),
)
def test_sender_text_never_changes_the_verdict(
    data: st.DataObject, verdict: str, payload: str, version: str | None
) -> None:
    """Comments, quoted strings and property values with dmarc=… leave the real result."""
    header = _render(data, verdict, payload, version)
    assert dmarc_verdict([header], TRUSTED) == verdict, header


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    verdict=st.sampled_from(["pass", "fail", "none"]),
    forged=st.sampled_from(["pass", "fail"]),
)
def test_headers_around_ours_never_change_the_verdict(
    data: st.DataObject, verdict: str, forged: str
) -> None:
    """Untrusted headers above ours and any header below ours leave our verdict alone."""
    ours = _render(data, verdict, f"dmarc={forged}", None)
    above = data.draw(
        st.lists(
            st.sampled_from(
                [
                    f"evil.example; dmarc={forged}",
                    f"{MX}.evil.example; dmarc={forged}",
                    f"relay.example (for {MX}); dmarc={forged}",
                    f"dmarc={forged} (no authserv-id, unparseable",
                ]
            ),
            max_size=3,
        )
    )
    below = data.draw(st.lists(st.just(f"{MX}; dmarc={forged}"), max_size=2))
    assert dmarc_verdict([*above, ours, *below], TRUSTED) == verdict
