"""ticketgate: gateway/service."""
