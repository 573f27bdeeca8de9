"""ticketgate: gateway/mail."""
