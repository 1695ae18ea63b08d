"""The pure pipeline: manifest -> policy -> ruleset text, and plan -> classify -> report.

Nothing here needs root, opens a socket, runs a command, reads the environment or
touches a file (tests/test_layout.py enforces the imports); the shell packages
(harden.apply, harden.verify, harden.lab, harden.cli) do that. See docs/design.md,
"The pipeline".
"""
