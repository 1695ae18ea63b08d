"""The harden.harden Ansible collection as users get it, and its role's variable table.

`build_and_install` builds the collection with ``ansible-galaxy collection build`` and
installs it from the tarball, the way a user installs it; the tests then run the
playbooks, which name the role ``harden.harden.harden``, against that installation.

`variables_table` renders the role README's table of variables from
``meta/argument_specs.yml`` (descriptions, types) and ``defaults/main.yml`` (defaults);
``python -m tests.collection --write`` (``make role-readme``) rewrites the README's table,
and tests/test_ansible.py fails when it is stale.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
COLLECTION = REPO / "vagrant" / "ansible" / "collection"
ROLE = COLLECTION / "roles" / "harden"
ROLE_README = ROLE / "README.md"
GALAXY = Path(sys.executable).parent / "ansible-galaxy"
BEGIN = "<!-- variables: generated from meta/argument_specs.yml by `make role-readme` -->"
END = "<!-- end of variables -->"


def build_and_install(work: Path) -> Path:
    """Build the collection's tarball in `work`, install it from there; the collections path."""
    work.mkdir(parents=True, exist_ok=True)
    _galaxy(work, "build", str(COLLECTION), "--output-path", str(work))
    (tarball,) = work.glob("harden-harden-*.tar.gz")
    installed = work / "collections"
    _galaxy(work, "install", str(tarball), "-p", str(installed))
    return installed


def _galaxy(work: Path, *args: str) -> None:
    """``ansible-galaxy collection ARGS``; its output in the error if it fails."""
    env = {"ANSIBLE_LOCAL_TEMP": str(work / "tmp"), "ANSIBLE_NOCOLOR": "1"}
    proc = subprocess.run(
        ["env", *(f"{k}={v}" for k, v in env.items()), str(GALAXY), "collection", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"ansible-galaxy collection {args[0]}: {proc.stdout}{proc.stderr}")


def _markup(text: str) -> str:
    """Ansible's doc markup (C(x), O(x), V(x)) as Markdown code."""
    return re.sub(r"\b[COV]\(([^)]*)\)", r"`\1`", " ".join(text.split()))


def _default(value: Any) -> str:
    """A default as Markdown code: a string as written ("" shown quoted), the rest as JSON."""
    text = value if isinstance(value, str) and value else json.dumps(value)
    return "`" + text.replace("|", "\\|") + "`"


def variables_table() -> str:
    """Every variable of every entry point: name, type, default, what it does."""
    specs = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    rows = ["| variable | type | default | what it does |", "|---|---|---|---|"]
    seen: set[str] = set()
    for entry, spec in specs.items():
        for name, option in spec.get("options", {}).items():
            if name in seen:
                continue
            seen.add(name)
            kind = option["type"]
            if "elements" in option:
                kind = f"{kind} of {option['elements']}"
            if "choices" in option:
                kind = f"{kind}: " + ", ".join(f"`{c}`" for c in option["choices"])
            what = _markup(option["description"])
            if entry != "main":
                what = f"({entry} only) {what}"
            rows.append(f"| `{name}` | {kind} | {_default(defaults.get(name))} | {what} |")
    return "\n".join(rows)


def readme_with_table(readme: str) -> str:
    """The README with its variables section replaced by the current table."""
    head, begin, rest = readme.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"{ROLE_README}: no {BEGIN!r} ... {END!r} section")
    return f"{head}{BEGIN}\n{variables_table()}\n{END}{tail}"


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        ROLE_README.write_text(readme_with_table(ROLE_README.read_text()))
    else:
        print(variables_table())
