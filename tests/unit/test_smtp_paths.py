"""The memoised MAIL FROM / RCPT TO path parsing answers exactly as aiosmtpd's own."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from aiosmtpd.smtp import SMTP

from gateway.mail.smtp_server import _parsed_path

PATHS = [
    "<frank@acme.example>",
    "<frank@acme.example> SIZE=1234 BODY=8BITMIME",
    "frank@acme.example",
    "<>",
    "",
    "<it+hardware@acme.example>",
    '<"odd local"@acme.example>',
    "<frank@acme.example",
    "<@relay.example:frank@acme.example>",
    "<" + "x" * 80 + "@acme.example>",
    "not an address at all",
    "<frank@[192.0.2.1]>",
]


@pytest.mark.parametrize("arg", PATHS)
@pytest.mark.parametrize("limit", [64, 0])
def test_memoised_path_parsing_matches_aiosmtpd(arg: str, limit: int) -> None:
    """Same input, same answer — including the refusals (None) and the parameters after it."""
    own = SMTP._getaddr(SimpleNamespace(local_part_limit=limit), arg)  # type: ignore[arg-type]
    assert _parsed_path(arg, limit) == own
    assert _parsed_path(arg, limit) == own  # and again, from the memo
