"""ticketgate: gateway."""
