"""What admins ask and are told: the commands, history, reports, alerts, their forms."""
