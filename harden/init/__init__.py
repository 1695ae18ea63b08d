"""``harden init``: a manifest proposed from what this host serves (never applied)."""
