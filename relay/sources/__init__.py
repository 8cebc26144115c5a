"""Where run updates come from: the HTTP API (push) and, later, the Realtime follower (pull)."""
