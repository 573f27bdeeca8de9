"""split_commands reads "#command" lines at the top of a body (SPEC §2.4)."""

from __future__ import annotations

import pytest

from gateway.mail.commands import BodyCommand, split_commands


def test_commands_then_message() -> None:
    """Commands at the top are returned in order; the rest is the message."""
    commands, rest = split_commands("#take\n#priority high\n\nI'll look at it today.\n")
    assert [c.action for c in commands] == ["take", "priority"]
    assert commands[1].args == ("high",)
    assert rest == "I'll look at it today.\n"


def test_blank_lines_before_and_between() -> None:
    """Blank lines before and between commands are allowed."""
    commands, rest = split_commands("\n\n#take\n\n#close\nDone")
    assert [c.action for c in commands] == ["take", "close"]
    assert rest == "Done"


def test_no_commands_returns_text_unchanged() -> None:
    """A body without commands comes back as it was."""
    text = "Hello\n#close\n"
    assert split_commands(text) == ((), text)


def test_hashtag_in_prose_is_not_a_command() -> None:
    """A #word after the first prose line is text."""
    commands, rest = split_commands("#hold waiting\nWe love #python\n#close")
    assert [c.action for c in commands] == ["hold"]
    assert rest == "We love #python\n#close"


@pytest.mark.parametrize(
    ("line", "action", "remark"),
    [
        ("#status DELIVERED", "deliver", ""),
        ("#status closed thanks", "close", "thanks"),
        ("#status CANCELLED", "cancel", ""),
        ("#status ON_HOLD parts ordered", "hold", "parts ordered"),
        ("#status on hold parts ordered", "hold", "parts ordered"),
        ("#status PENDING", "pending", ""),
        ("#status WORKING_ON_IT", "take", ""),
        ("#status RELEASED", "release", ""),
        ("#status REJECTED not ours", "reject", "not ours"),
        ("#status RETURNED", "return", ""),
        ("#status REOPENED", "reopen", ""),
        ("#status APPROVED", "approve", ""),
        ("#status ESCALATED", "escalate", ""),
        ("#status TO_HIGHER_AUTHORITY", "to_higher_authority", ""),
    ],
)
def test_status_maps_to_action(line: str, action: str, remark: str) -> None:
    """A "#status X" line becomes the action that leads to status X."""
    (command,), _ = split_commands(line)
    assert (command.action, command.remark) == (action, remark)


def test_remark_commands_keep_the_rest_of_the_line() -> None:
    """return/hold/pending/reject carry the rest of the line as a remark, not args."""
    (command,), _ = split_commands("#return Please attach the invoice, thanks")
    assert command == BodyCommand(
        action="return",
        args=(),
        remark="Please attach the invoice, thanks",
        raw="#return Please attach the invoice, thanks",
    )


def test_address_arguments_split_on_commas_and_spaces() -> None:
    """#cc/#bcc/#assign take addresses separated by commas or whitespace."""
    (cc, assign), _ = split_commands(
        "#cc a@example.com, b@example.com c@example.com\n#assign d@example.com"
    )
    assert cc.args == ("a@example.com", "b@example.com", "c@example.com")
    assert assign.args == ("d@example.com",)


def test_category_keeps_the_path() -> None:
    """#category A/B is one argument."""
    (command,), _ = split_commands("#category Hardware/Mouse")
    assert command.args == ("Hardware/Mouse",)


@pytest.mark.parametrize(
    "line", ["#to-higher-authority", "#TO_HIGHER_AUTHORITY", "#To-Higher-Authority"]
)
def test_higher_authority_spellings(line: str) -> None:
    """Dashes, underscores and case all reach the same action."""
    (command,), _ = split_commands(line)
    assert command.action == "to_higher_authority"


def test_escalate_case_insensitive() -> None:
    """#ESCALATE is #escalate."""
    (command,), _ = split_commands("#ESCALATE")
    assert command.action == "escalate"


def test_unknown_command_at_top_is_reported() -> None:
    """An unknown #word in the command block is returned as "unknown" for the caller to refuse."""
    (command,), rest = split_commands("#frobnicate now\nHello")
    assert command.action == "unknown"
    assert command.args == ("frobnicate",)
    assert rest == "Hello"


def test_markdown_heading_is_not_a_command() -> None:
    """A markdown "# Heading" (space after #) is prose."""
    assert split_commands("# Heading\ntext")[0] == ()


def test_crlf_body() -> None:
    """CRLF line endings are handled."""
    commands, rest = split_commands("#take\r\n\r\nOn it.\r\n")
    assert [c.action for c in commands] == ["take"]
    assert rest == "On it.\n"
