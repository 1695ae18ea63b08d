#!/bin/sh
# harden from its private venv. -I (isolated): root's harden imports only what the package
# installed, never a module from the current directory, PYTHONPATH or a user's site.
exec /usr/lib/harden/bin/python3 -I -m harden.cli "$@"
