"""Shared fixtures: throwaway network namespaces and the golden-file switch."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harden.lab.netns import Namespace

REPO = Path(__file__).resolve().parent.parent

# Any code path that would load rules outside a namespace a test created refuses
# to run while this is set (see harden.apply.guard.current_namespace_name).
os.environ["HARDEN_REQUIRE_NETNS"] = "1"


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse a machine whose own boot files are harden's: an apply without --root in a
    test (inside a namespace) would keep them in step with the test's rules."""
    from harden.apply import boot

    if boot.present(Path("/")):
        pytest.exit(
            "this machine's /etc holds harden's boot files: the tests' applies would keep "
            "them in step (docs/design.md, 'Boot files follow what is live'); run the tests "
            "on a machine harden does not guard",
            returncode=4,
        )


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="rewrite expected outputs in tests/golden and rulesets/ instead of comparing",
    )


def own_namespaces() -> set[str]:
    """Network namespaces this test process created and has not removed (names carry the pid).

    Only our own: other runs on the same machine may be creating theirs meanwhile.
    """
    run = Path("/run/netns")
    tag = f"-{os.getpid()}-"
    return {p.name for p in run.iterdir() if tag in p.name} if run.exists() else set()


@pytest.fixture(autouse=True)
def _netns_needs_root(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("netns") and os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces")


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture
def netns() -> Iterator[Callable[[str], Namespace]]:
    """Factory for namespaces that are deleted when the test ends, pass or fail."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces")
    made: list[Namespace] = []

    def make(prefix: str = "t") -> Namespace:
        ns = Namespace(prefix).__enter__()
        made.append(ns)
        return ns

    yield make
    for ns in reversed(made):
        ns.close()


@pytest.fixture
def in_netns() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start ``argv`` inside a namespace and wait for its "ready" line; all killed at the end."""
    procs: list[subprocess.Popen[str]] = []

    def start(ns: Namespace, *argv: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns.name, *argv], stdout=subprocess.PIPE, text=True
        )
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()
