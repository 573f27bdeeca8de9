"""ticketgate: store."""
