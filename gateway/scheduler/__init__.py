"""ticketgate: gateway/scheduler."""
