"""The architecture as a test: harden.core is pure, and the README's layout is the tree."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CORE = sorted((REPO / "harden" / "core").glob("*.py"))

# What a pure stage may not reach for: processes, sockets, the environment, files,
# threads, the kernel bindings, or the shell packages that do those things.
FORBIDDEN = {
    "subprocess",
    "socket",
    "os",
    "shutil",
    "tempfile",
    "fcntl",
    "threading",
    "selectors",
    "resource",
    "pathlib",
    "nftables",
    "scapy",
    "harden.apply",
    "harden.verify",
    "harden.lab",
    "harden.cli",
    "harden.api",
    "harden.files",
}
FORBIDDEN_CALLS = {"open", "getenv", "putenv", "system", "popen"}


def imported(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def violations(tree: ast.AST) -> list[str]:
    found = sorted(
        name
        for name in imported(tree)
        if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN)
    )
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if called in FORBIDDEN_CALLS:
                found.append(f"call {called}() at line {node.lineno}")
        if isinstance(node, ast.Attribute) and node.attr == "environ":
            found.append(f"environ at line {node.lineno}")
    return found


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_core_module_is_pure(path: Path) -> None:
    assert violations(ast.parse(path.read_text())) == []


def test_the_purity_check_catches_what_it_forbids() -> None:
    bad = "import subprocess\nfrom harden.verify.raw import Capture\nimport os\nos.environ['X']\n"
    bad += "open('/etc/passwd')\n"
    found = violations(ast.parse(bad))
    assert "subprocess" in found and "harden.verify.raw" in found and "os" in found
    assert any(v.startswith("environ") for v in found)
    assert any(v.startswith("call open()") for v in found)


def test_readme_layout_names_every_module_of_the_package() -> None:
    readme = (REPO / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("```")[1]
    listed = set(re.findall(r"[\w/]+\.py|[\w]+/", layout))
    package = REPO / "harden"
    for path in sorted(package.rglob("*.py")):
        if path.name == "__init__.py":
            continue
        assert path.name in listed, f"README layout misses {path.relative_to(REPO)}"
    for folder in sorted(p for p in package.iterdir() if p.is_dir() and p.name != "__pycache__"):
        assert f"{folder.name}/" in listed, f"README layout misses {folder.relative_to(REPO)}/"


def test_design_references_in_code_name_real_sections() -> None:
    headings = {
        line.lstrip("#").strip()
        for line in (REPO / "docs" / "design.md").read_text().splitlines()
        if line.startswith("#")
    }
    cited = []
    for path in sorted((REPO / "harden").rglob("*")):
        if path.suffix not in (".py", ".j2"):
            continue
        text = " ".join(path.read_text().split())  # a citation may wrap across lines
        text = text.replace('"""', "").replace("# ", "")
        cited += [(path.name, m) for m in re.findall(r'docs/design\.md, "([^"]+)"', text)]
    assert cited, "no code cites docs/design.md"
    missing = [(name, section) for name, section in cited if section not in headings]
    assert missing == []
    assert not any("LAB.md" in p.read_text() for p in (REPO / "harden").rglob("*.py"))


def _import_graph() -> dict[str, set[str]]:
    """Every harden module -> the harden modules it imports (lazy imports included)."""
    root = REPO / "harden"
    modules = {}
    for path in root.rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    found.add(full if full in modules else node.module)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[str]:
    """The modules that reach themselves again through their imports."""
    found = []
    for start in graph:
        seen: set[str] = set()
        todo = list(graph[start])
        while todo:
            module = todo.pop()
            if module == start:
                found.append(start)
                break
            if module not in seen:
                seen.add(module)
                todo.extend(graph.get(module, ()))
    return sorted(found)


def test_no_import_cycles_lazy_imports_included() -> None:
    graph = _import_graph()
    assert "harden.core.policy" in graph["harden.core.render"]  # the graph is real
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c"]


def test_apply_and_verify_never_import_upward() -> None:
    """The lab builds on apply and verify, the CLI and API on everything: never back."""
    upward = ("harden.lab", "harden.cli", "harden.api")
    graph = _import_graph()
    bad = sorted(
        f"{module} -> {dep}"
        for module, deps in graph.items()
        if module.startswith(("harden.apply", "harden.verify", "harden.core"))
        for dep in deps
        if dep.startswith(upward)
    )
    assert bad == []


MAX_FUNCTION_LINES = 60


def test_functions_stay_small() -> None:
    """No function of the package is over 60 lines, docstring included."""
    long = sorted(
        f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})"
        for path in (REPO / "harden").rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    )
    assert long == []
