"""Apply a ruleset to this host's kernel: check, snapshot, load, confirm or roll back."""

from harden.apply.transaction import (
    apply,
    confirm,
    diff,
    remove,
    reset,
    rollback,
    rollback_if_pending,
    status,
)

__all__ = [
    "apply",
    "confirm",
    "diff",
    "remove",
    "reset",
    "rollback",
    "rollback_if_pending",
    "status",
]
