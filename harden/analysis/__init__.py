"""Analysis of the live ruleset as a whole: every table, every base chain, every new packet.

``harden analyze`` and ``harden explain``; docs/design.md, "Reading the live ruleset".
"""
