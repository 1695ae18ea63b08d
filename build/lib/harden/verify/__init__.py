"""Verify a host from outside: one round engine over a raw or a connect() transport."""
