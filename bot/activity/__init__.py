"""The activity model: sessions, logins, logouts, start-up load, resync, retention."""
