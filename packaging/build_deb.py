"""Build build/harden_VERSION_ARCH.deb: harden in a private venv under /usr/lib/harden.

    /usr/bin/python3 packaging/build_deb.py OUTDIR

dh-virtualenv's layout without debhelper: a venv made by Debian's own python3 with
--system-site-packages (so Debian's python3-nftables imports), harden and every Python
dependency pip-installed into it (pydantic 2 is not in Debian 12; carrying the others too
keeps one tested set of versions), built in a staging tree at its final path under that
tree and then relocated: pyvenv.cfg names /usr/lib/harden, and bin/ keeps only the
interpreter (its console scripts' shebangs name the staging path), which the wrapper
/usr/sbin/harden runs. No bytecode is shipped (postinst compiles it, prerm and postrm
remove it). dpkg-deb builds
the package as root:root; nothing here needs root or touches the machine outside OUTDIR
and a temporary directory. Python 3.11 standard library only: it runs before any venv.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from email.parser import HeaderParser
from email.utils import parsedate_to_datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PREFIX = "usr/lib/harden"  # the venv's final path, relative to /
PYTHON = "/usr/bin/python3"  # Debian's: the venv must see its dist-packages
# click's completion scripts: (the shell, where Debian's packages put its completions).
COMPLETIONS = {
    "bash": "usr/share/bash-completion/completions/harden",
    "zsh": "usr/share/zsh/vendor-completions/_harden",
    "fish": "usr/share/fish/vendor_completions.d/harden.fish",
}
SCRIPTS = ("preinst", "postinst", "prerm", "postrm")
# In place of "#WINDOW_OPEN#" in the scripts: the confirm-window check preinst and prerm share.
SNIPPET = "window-open.sh"
# DEP-5 short names for what the libraries' metadata says.
LICENSES = {
    "MIT": "Expat",
    "MIT License": "Expat",
    "BSD License": "BSD-3-clause",
    "BSD-3-Clause": "BSD-3-clause",
    "BSD-2-Clause": "BSD-2-clause",
    "GPL-2.0-only": "GPL-2",
    "GNU General Public License v2 (GPLv2)": "GPL-2",
    "Python Software Foundation License": "PSF-2.0",
    "PSF-2.0": "PSF-2.0",
    "Apache Software License": "Apache-2.0",
    "Apache-2.0": "Apache-2.0",
}
# Licences Debian ships in /usr/share/common-licenses: a pointer, not the text (lintian).
COMMON = {"GPL-2": "GPL-2", "Apache-2.0": "Apache-2.0"}


def run(*argv: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    """Run a build step; its output on failure, and stop."""
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, check=False)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)}: rc {proc.returncode}\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def version() -> str:
    """The version pyproject.toml declares (the changelog's top entry must agree)."""
    with (REPO / "pyproject.toml").open("rb") as f:
        found = str(tomllib.load(f)["project"]["version"])
    top = (HERE / "changelog").read_text().split("\n", 1)[0]
    if f"harden ({found})" not in top:
        sys.exit(f"packaging/changelog starts with {top!r}: add an entry for {found}")
    return found


def released() -> str:
    """The date of the changelog's top entry, in seconds since the epoch."""
    trailer = next(
        line for line in (HERE / "changelog").read_text().splitlines() if line.startswith(" -- ")
    )
    return str(int(parsedate_to_datetime(trailer.split("  ", 1)[1]).timestamp()))


def install_venv(root: Path, tmp: Path) -> Path:
    """A venv at root/PREFIX with harden and its dependencies; return its path."""
    venv = root / PREFIX
    run(PYTHON, "-m", "venv", "--system-site-packages", str(venv))
    # The sources alone, as the package's: no build/ or egg-info written into the checkout.
    src = tmp / "src"
    src.mkdir()
    shutil.copy2(REPO / "pyproject.toml", src)
    shutil.copy2(REPO / "README.md", src)
    shutil.copytree(REPO / "harden", src / "harden", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [str(venv / "bin" / "python3"), "-m", "pip", "--disable-pip-version-check"]
    # --ignore-installed: every dependency goes into the venv, even one this build machine
    # happens to have from Debian (python3-yaml), which the package does not depend on.
    run(*pip, "install", "-q", "--no-compile", "--ignore-installed", "--no-cache-dir", str(src))
    run(*pip, "uninstall", "-q", "-y", "pip", "setuptools")
    return venv


def write_completions(root: Path, venv: Path) -> None:
    """The completion scripts click writes for bash, zsh and fish, from the built harden."""
    for shell, dest in COMPLETIONS.items():
        env = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}
        env["_HARDEN_COMPLETE"] = f"{shell}_source"
        text = run(str(venv / "bin" / "harden"), env=env)
        if "_HARDEN_COMPLETE" not in text:
            sys.exit(f"no {shell} completion from harden:\n{text}")
        path = root / dest
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def relocate(root: Path, venv: Path) -> None:
    """Make the staged venv the one at /PREFIX: no build path left in it, no bytecode."""
    staged, final = str(venv), f"/{PREFIX}"
    # Only the interpreter stays in bin/: /usr/sbin/harden runs it (-I -m harden.cli), and
    # the libraries' console scripts (scapy, pygmentize) are not harden's to offer.
    for path in (venv / "bin").iterdir():
        if not path.name.startswith("python"):
            path.unlink()
    # Relative, as Debian wants a link within /usr: the venv's python is Debian's python3.
    (venv / "bin" / "python3").unlink()
    (venv / "bin" / "python3").symlink_to("../../../bin/python3")
    # scapy's man page (its command is not installed) and the empty include/ of every venv.
    shutil.rmtree(venv / "share", ignore_errors=True)
    shutil.rmtree(venv / "include", ignore_errors=True)
    for path in list(venv.rglob("__pycache__")):
        shutil.rmtree(path)
    # A path on the build machine, recorded by pip (PEP 610); it means nothing installed.
    for path in venv.glob("lib/python3*/site-packages/harden-*.dist-info/direct_url.json"):
        path.unlink()
    cfg = venv / "pyvenv.cfg"
    cfg.write_text(cfg.read_text().replace(staged, final))
    left = [p for p in root.rglob("*") if p.is_file() and staged.encode() in p.read_bytes()]
    if left:
        sys.exit(f"the build path is still named in: {left}")


def write_man_pages(root: Path) -> None:
    """docs/man's pages, gzipped without a name or time (reproducible), by section."""
    pages = sorted(REPO.glob("docs/man/*.[1-8]"))
    if not any(page.name == "harden.1" for page in pages):
        sys.exit("docs/man/harden.1 is missing (make man)")
    for page in pages:
        folder = root / "usr/share/man" / f"man{page.suffix[1:]}"
        folder.mkdir(parents=True, exist_ok=True)
        write_gzip(folder / f"{page.name}.gz", page.read_bytes())


def write_gzip(path: Path, data: bytes) -> None:
    """Write ``data`` as gzip -9n does: the same bytes for the same input."""
    with path.open("wb") as raw, gzip.GzipFile("", "wb", 9, raw, mtime=0) as out:
        out.write(data)


def _stanza(dist_info: Path) -> str:
    """The copyright stanza of one carried library, from its METADATA and licence file."""
    meta = HeaderParser().parsestr((dist_info / "METADATA").read_text(errors="replace"))
    raw = meta.get("License-Expression") or meta.get("License") or ""
    if raw not in LICENSES:
        raw = next(
            (c.rsplit(" :: ", 1)[1] for c in meta.get_all("Classifier", []) if "License ::" in c),
            raw,
        )
    name = LICENSES.get(raw.strip(), raw.strip().splitlines()[0] if raw.strip() else "unknown")
    author = meta.get("Author") or meta.get("Author-email") or meta.get("Maintainer") or ""
    author = author or meta.get("Maintainer-email") or "its authors"
    tops = sorted({line.split("/", 1)[0] for line in _record(dist_info)})
    # A folder (package or dist-info) with everything in it, or a top-level module.
    site = f"{PREFIX}/lib/python3*/site-packages"
    files = " ".join(f"{site}/{top}" if top.endswith(".py") else f"{site}/{top}/*" for top in tops)
    if name in COMMON:
        text = f"On Debian systems, see /usr/share/common-licenses/{COMMON[name]}."
    else:
        found = sorted(p for p in dist_info.rglob("*") if re.match(r"(LICEN[CS]E|COPYING)", p.name))
        text = found[0].read_text(errors="replace") if found else f"{raw} (see its metadata)"
    body = "\n".join(f" {line}" if line.strip() else " ." for line in text.strip().splitlines())
    who = " ".join(author.split())
    return (
        f"Files: {files}\nCopyright: {who}\nLicense: {name}\n"
        f"Comment: {meta['Name']} {meta['Version']}\n{body}\n"
    )


def _record(dist_info: Path) -> list[str]:
    """The files pip installed for one distribution, relative to site-packages."""
    lines = (dist_info / "RECORD").read_text().splitlines()
    return [line.split(",", 1)[0] for line in lines if not line.startswith("..")]


def write_docs(root: Path, venv: Path) -> None:
    """The copyright (harden's, then each carried library's), changelog.gz, lintian overrides.

    changelog.gz, not changelog.Debian.gz: the version has no Debian revision, so this is a
    native package, whose changelog Policy 12.7 names changelog.gz.
    """
    doc = root / "usr/share/doc/harden"
    doc.mkdir(parents=True, exist_ok=True)
    stanzas = [
        _stanza(info)
        for info in sorted(venv.glob("lib/python3*/site-packages/*.dist-info"))
        if not info.name.startswith("harden-")
    ]
    (doc / "copyright").write_text("\n".join([(HERE / "copyright.in").read_text(), *stanzas]))
    write_gzip(doc / "changelog.gz", (HERE / "changelog").read_bytes())
    overrides = root / "usr/share/lintian/overrides"
    overrides.mkdir(parents=True)
    shutil.copy2(HERE / "lintian-overrides", overrides / "harden")


def normalise(root: Path) -> None:
    """Modes as Debian wants them: 0755 folders and programs, 0644 the rest (and libraries)."""
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        if path.is_dir():
            path.chmod(0o755)
        elif path.suffix == ".so" or ".so." in path.name:
            run("strip", "--strip-unneeded", "--remove-section=.comment", str(path))
            path.chmod(0o644)
        else:
            # The libraries' modules are imported, never run: none is executable.
            program = path.parent.name in ("sbin", "bin") and path.read_bytes()[:2] == b"#!"
            path.chmod(0o755 if program else 0o644)


def write_control(root: Path, version_: str, arch: str) -> None:
    """DEBIAN/: control (with the installed size), md5sums and the maintainer scripts."""
    debian = root / "DEBIAN"
    debian.mkdir()
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    sums = "".join(
        f"{hashlib.md5(p.read_bytes()).hexdigest()}  {p.relative_to(root)}\n" for p in files
    )
    (debian / "md5sums").write_text(sums)
    size = sum(-(-p.stat().st_size // 1024) for p in files) + len(list(root.rglob("*")))
    control = (HERE / "control.in").read_text()
    (debian / "control").write_text(
        control.format(version=version_, arch=arch, installed_size=size)
    )
    snippet = (HERE / SNIPPET).read_text().rstrip("\n")
    for name in SCRIPTS:
        (debian / name).write_text((HERE / name).read_text().replace("#WINDOW_OPEN#", snippet))
        (debian / name).chmod(0o755)
    (debian / "control").chmod(0o644)
    (debian / "md5sums").chmod(0o644)


def build(out: Path, fast: bool = False) -> Path:
    """Stage, relocate and pack the package into ``out``; return the .deb's path.

    ``fast`` packs with xz level 1, not dpkg-deb's 6: the same files in a 15% larger .deb,
    in a tenth of the time (the tests' build; a release takes the default).
    """
    version_ = version()
    arch = run("dpkg", "--print-architecture").strip()
    out.mkdir(parents=True, exist_ok=True)
    deb = out / f"harden_{version_}_{arch}.deb"
    with tempfile.TemporaryDirectory(prefix="harden-deb.") as name:
        tmp = Path(name)
        root = tmp / "root"
        venv = install_venv(root, tmp)
        write_completions(root, venv)
        relocate(root, venv)
        sbin = root / "usr/sbin"
        sbin.mkdir(parents=True)
        shutil.copy2(HERE / "harden.sh", sbin / "harden")
        write_man_pages(root)
        write_docs(root, venv)
        normalise(root)
        write_control(root, version_, arch)
        # The archive's times: the changelog's date (reproducible, as dpkg-buildpackage does).
        env = {**os.environ, "SOURCE_DATE_EPOCH": os.environ.get("SOURCE_DATE_EPOCH", released())}
        tmp_deb = tmp / deb.name
        level = ["-z1"] if fast else []
        run(
            "dpkg-deb",
            "--root-owner-group",
            "-Zxz",
            *level,
            "--build",
            str(root),
            str(tmp_deb),
            env=env,
        )
        shutil.move(tmp_deb, deb)  # never a half-written .deb under its final name
    return deb


def main(argv: list[str]) -> int:
    """Build the package into the first argument (default build/) and print its path.

    ``--fast`` packs it faster and larger (see ``build``).
    """
    fast = "--fast" in argv
    folders = [a for a in argv if a != "--fast"]
    out = Path(folders[0]) if folders else REPO / "build"
    print(build(out.resolve(), fast=fast))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
