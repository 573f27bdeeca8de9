"""ticketgate: gateway/slack."""
