"""The architecture as a test: the pure modules are pure, and the layout listing is the tree."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# The pure modules, by name: the manifest, the policy, the backends' rule text, judging
# and the report formats. They compute; the rest (apply, the probe engine, the lab, the
# CLI) touches the kernel, sockets, files and the environment. docs/design.md, "The pipeline".
PURE_GLOBS = (
    "harden/types.py",
    "harden/text.py",
    "harden/schedule.py",
    "harden/gcpause.py",
    "harden/manifest/*.py",
    "harden/policy/*.py",
    "harden/outputs/*.py",
    "harden/backends/spec.py",
    "harden/backends/templating.py",
    "harden/backends/*/__init__.py",
    "harden/backends/*/rules.py",
    "harden/verify/plan.py",
    "harden/verify/classify.py",
    "harden/verify/findings.py",
    "harden/verify/report.py",
    "harden/verify/witness.py",
    "harden/verify/static.py",
    "harden/verify/egress/verdict.py",
    "harden/apply/results.py",
    "harden/apply/others.py",
    "harden/init/proposal.py",
    "harden/analysis/model.py",
    "harden/analysis/engine.py",
    "harden/analysis/matrix.py",
    "harden/analysis/results.py",
    "harden/analysis/xt.py",
    "harden/analysis/crosscheck.py",
    "harden/analysis/index.py",
)
PURE = sorted({path for pattern in PURE_GLOBS for path in REPO.glob(pattern)})


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


PURE_MODULES = {module_name(path) for path in PURE}
# Shared leaves a pure module may import: the errors it raises (one formats a command line
# with subprocess.list2cmdline, a pure function), the defaults, the version.
SHARED = {"harden", "harden.errors", "harden.defaults"}

# What a pure module may not reach for: processes, sockets, the environment, files,
# threads, dynamic imports, the kernel bindings; and no harden module that is not pure.
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
    "importlib",
    "nftables",
    "scapy",
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
        or (name.startswith("harden.") and not _pure_import(name))
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


def _pure_import(name: str) -> bool:
    """A pure module, a name in one (``from m import x`` lists both) or a pure package."""
    allowed = PURE_MODULES | SHARED
    return name in allowed or name.rpartition(".")[0] in allowed


@pytest.mark.parametrize("path", PURE, ids=lambda p: str(p.relative_to(REPO / "harden")))
def test_pure_module_is_pure(path: Path) -> None:
    assert violations(ast.parse(path.read_text())) == []


def test_the_pure_modules_are_the_pipeline() -> None:
    """The globs name real modules: each feature has its pure half."""
    for feature in (
        "manifest",
        "policy",
        "outputs",
        "backends",
        "verify",
        "apply",
        "init",
        "analysis",
    ):
        assert any(m.startswith(f"harden.{feature}.") for m in PURE_MODULES), feature


def test_the_purity_check_catches_what_it_forbids() -> None:
    bad = "import subprocess\nfrom harden.verify.engine.raw import Capture\nimport os\n"
    bad += "from harden.policy.model import Policy\nimport importlib\n"
    bad += "os.environ['X']\n"
    bad += "open('/etc/passwd')\n"
    found = violations(ast.parse(bad))
    assert "subprocess" in found and "harden.verify.engine.raw" in found and "os" in found
    assert "importlib" in found and not any(v.startswith("harden.policy") for v in found)
    assert any(v.startswith("environ") for v in found)
    assert any(v.startswith("call open()") for v in found)


def test_the_layout_listing_names_every_module_of_the_package() -> None:
    guide = (REPO / "docs" / "contributing.md").read_text()
    layout = guide.split("## Layout", 1)[1].split("```")[1]
    listed = set(re.findall(r"[\w/]+\.py|[\w]+/", layout))
    package = REPO / "harden"
    for path in sorted(package.rglob("*.py")):
        if path.name == "__init__.py":
            continue
        assert path.name in listed, f"docs/contributing.md layout misses {path.relative_to(REPO)}"
    for folder in sorted(p for p in package.iterdir() if p.is_dir() and p.name != "__pycache__"):
        assert f"{folder.name}/" in listed, (
            f"docs/contributing.md layout misses {folder.relative_to(REPO)}/"
        )


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
    assert "harden.policy.model" in graph["harden.backends.nftables.rules"]  # the graph is real
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c"]


def test_features_never_import_upward() -> None:
    """The lab builds on the features, the request layer, CLI and API on everything: never back."""
    upward = ("harden.lab", "harden.cli", "harden.api", "harden.request")
    graph = _import_graph()
    bad = sorted(
        f"{module} -> {dep}"
        for module, deps in graph.items()
        for dep in deps
        if (not module.startswith(upward) and dep.startswith(upward))
        or (module.startswith("harden.lab") and dep.startswith(("harden.cli", "harden.api")))
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


def _code_tokens(path: Path) -> list[tuple[int, str]]:
    """A module's tokens outside comments and docstrings, with their line."""
    import io
    import tokenize

    source = path.read_text()
    docstrings = {
        node.body[0].value.lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (tok.start[0], tok.string)
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type != tokenize.COMMENT
        and not (tok.type == tokenize.STRING and tok.start[0] in docstrings)
    ]


def test_backend_facts_stay_in_the_backends() -> None:
    """Outside harden/backends, "iptables" is in the code of at most 4 modules (issue 34).

    Those left speak of other firewalls (firewalld's FirewallBackend=iptables, rules in
    iptables-legacy) or of the manifest's limits, not of harden's own iptables backend.
    """
    found = sorted(
        str(path.relative_to(REPO))
        for path in (REPO / "harden").rglob("*.py")
        if "backends" not in path.parts
        and any("iptables" in text.lower() for _, text in _code_tokens(path))
    )
    assert len(found) <= 4, found
    assert "harden/apply/boot.py" not in found and "harden/cli.py" not in found
