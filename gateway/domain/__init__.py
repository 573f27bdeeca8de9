"""ticketgate: gateway/domain."""
