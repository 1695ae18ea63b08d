# Whether a confirm window of `harden apply --confirm` is open: harden's record (the default
# state directory) holds a pending confirmation with a deadline. The window's rollback
# watchdog runs the installed harden; replacing or removing it under the watchdog could keep
# the rollback from happening (docs/operations.md, "The Debian package").
harden_window_open() {
    state=/var/lib/harden/state.json
    [ -f "$state" ] && command -v python3 >/dev/null 2>&1 || return 1
    python3 -I -c '
import json, sys
try:
    with open(sys.argv[1]) as f:
        pending = json.load(f).get("pending") or {}
    sys.exit(0 if pending.get("deadline") is not None else 1)
except (OSError, ValueError, AttributeError):
    sys.exit(1)
' "$state"
}

harden_refuse_in_window() {
    if harden_window_open; then
        echo "harden: a confirm window is open (harden status shows it): run 'harden confirm'" \
            "or 'harden rollback' first, then $1 harden again; its rollback watchdog runs the" \
            "installed harden" >&2
        exit 1
    fi
}
