"""harden: default-DROP firewalls from a service manifest, verified from outside."""

__version__ = "0.1.0"
