"""Transports that put probes on the wire and capture what comes back."""
