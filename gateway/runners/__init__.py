"""Long-running loops of `ticketgate run`: each asks the service for work and owns no rules."""
