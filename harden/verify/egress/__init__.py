"""Egress: probes from the hardened host, the sink that records them, and the verdict.

docs/design.md, "Egress".
"""
