"""The dependency direction (docs/DESIGN.md, Architecture): every import of every module, read with ast.

cli -> (reports, search, kernels) -> simulator -> hwmodels. Engine packages import downward only (no
sibling imports between reports, search and kernels), nothing imports cli but cli, and the heavy
optional packages are imported at module level only where they belong (torch and triton in kernels,
optuna in search). Function-level imports count the same as top-level ones for the direction.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cli", "simulator", "hwmodels", "search", "kernels", "reports")
#: What each package may import of sparsesim (itself included).
ALLOWED = {
    "hwmodels": {"hwmodels"},
    "simulator": {"simulator", "hwmodels"},
    "search": {"search", "simulator", "hwmodels"},
    "kernels": {"kernels", "simulator", "hwmodels"},
    "reports": {"reports", "simulator", "hwmodels"},
    "cli": set(PACKAGES),
}
#: Heavy packages and the sparsesim packages that may import them at module level.
HEAVY_TOP_LEVEL = {"torch": {"kernels", "cli"}, "triton": {"kernels", "cli"}, "optuna": {"search", "cli"}}
#: Never loaded by importing the core's pattern module.
NOT_FOR_A_PATTERN = ("pandas", "scipy", "torch", "triton", "optuna", "matplotlib", "sparsesim.search",
                     "sparsesim.kernels", "sparsesim.reports", "sparsesim.cli")


def modules() -> list[tuple[str, Path]]:
    """(dotted module name, path) of every module of the six packages."""
    out = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out.append(("sparsesim." + ".".join(parts), path))
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def imports(module: str, path: Path, tree: ast.AST | None = None) -> list[tuple[int, str, bool]]:
    """Every import of a module: (line, absolute target, at module level). Relative imports are resolved;
    ``from pkg import name`` yields ``pkg.name`` (a submodule or an attribute: both name the package).
    Imports under ``if TYPE_CHECKING:`` are left out (they never run)."""
    tree = tree if tree is not None else ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_pkg = path.name == "__init__.py"
    found: list[tuple[int, str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit_stmt(sub, top)
                continue
            visit_stmt(child, top)

    def visit_stmt(child: ast.AST, top: bool) -> None:
        if isinstance(child, ast.Import):
            found.extend((child.lineno, a.name, top) for a in child.names)
        elif isinstance(child, ast.ImportFrom):
            if child.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[:len(base) - (child.level - 1)]
                prefix = ".".join(base + ([child.module] if child.module else []))
            else:
                prefix = child.module or ""
            found.extend((child.lineno, f"{prefix}.{a.name}" if a.name != "*" else prefix, top)
                         for a in child.names)
        inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        visit(child, inner)

    visit(tree, True)
    return found


def violations(module: str, path: Path, tree: ast.AST | None = None) -> list[str]:
    """The imports of ``module`` that break the direction, one line each."""
    pkg = module.split(".")[1]
    rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    bad = []
    for line, target, top in imports(module, path, tree):
        parts = target.split(".")
        if parts[0] == "sparsesim":
            if len(parts) == 1 or parts[1] not in PACKAGES:
                if pkg != "cli":
                    bad.append(f"{rel}:{line}: imports {target} (the namespace as a whole)")
            elif parts[1] not in ALLOWED[pkg]:
                bad.append(f"{rel}:{line}: {pkg} imports {target} (allowed: {', '.join(sorted(ALLOWED[pkg]))})")
        elif parts[0] in HEAVY_TOP_LEVEL and top and pkg not in HEAVY_TOP_LEVEL[parts[0]]:
            bad.append(f"{rel}:{line}: {pkg} imports {parts[0]} at module level (import it where it is used)")
    return bad


def test_the_walk_sees_every_package():
    found = {m.split(".")[1] for m, _ in modules()}
    assert found == set(PACKAGES)
    assert len(modules()) > 40


def test_every_import_goes_downward():
    bad = [v for m, p in modules() for v in violations(m, p)]
    assert not bad, "upward or sibling imports:\n" + "\n".join(bad)


@pytest.mark.parametrize("module,source,expect", [
    ("sparsesim.simulator.x", "def f():\n    from sparsesim.reports import build\n", "reports"),
    ("sparsesim.simulator.x", "from ..cli import main\n", "sparsesim.cli.main"),
    ("sparsesim.simulator.x", "import sparsesim.search.plan\n", "sparsesim.search.plan"),
    ("sparsesim.hwmodels.x", "from sparsesim.simulator.errors import ConfigError\n", "simulator"),
    ("sparsesim.reports.x", "from sparsesim.search import plan\n", "search"),
    ("sparsesim.search.x", "class A:\n    def f(self):\n        import sparsesim.kernels.gna\n", "kernels"),
    ("sparsesim.kernels.x", "from sparsesim import cli\n", "cli"),
    ("sparsesim.simulator.x", "import torch\n", "torch at module level"),
    ("sparsesim.reports.x", "try:\n    import optuna\nexcept ImportError:\n    pass\n", "optuna at module level"),
])
def test_the_checker_catches(module, source, expect, tmp_path):
    # The checker itself can fail: each snippet is one forbidden import, function-level and relative ones included.
    path = tmp_path / "x.py"
    path.write_text(source)
    bad = violations(module, path, ast.parse(source))
    assert len(bad) == 1 and expect in bad[0], bad


@pytest.mark.parametrize("module,source", [
    ("sparsesim.simulator.x", "from . import cost\nfrom sparsesim.hwmodels import load_gpu\n"),
    ("sparsesim.kernels.x", "import torch\nimport triton.language as tl\nfrom sparsesim.simulator import schedule\n"),
    ("sparsesim.search.x", "def f():\n    import torch\n    import optuna\n"),
    ("sparsesim.simulator.x", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pandas as pd\n"),
    ("sparsesim.cli.x", "from sparsesim.reports import build\nfrom sparsesim.kernels import gna\n"),
])
def test_the_checker_allows(module, source, tmp_path):
    path = tmp_path / "x.py"
    path.write_text(source)
    assert violations(module, path, ast.parse(source)) == []


def test_a_pattern_loads_no_heavy_package():
    # A fresh interpreter: what importing the core's pattern module drags in. (The time it takes is measured
    # with `python -X importtime`; a timing assertion would be flaky, the modules it loads are not.)
    code = ("import sys; import sparsesim.simulator.patterns; "
            f"print(' '.join(m for m in {NOT_FOR_A_PATTERN!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == []


# ---------------------------------------------------------------- citations of the design document

#: ``docs/DESIGN.md, Section`` / ``docs/DESIGN.md (Section)`` / ``docs/DESIGN.md "Section"`` / ``docs/DESIGN.md's
#: formulas (Section)``: the section named after a citation.
CITED_SECTION = re.compile(r"""docs/DESIGN\.md(?:'s [^(\n]*?)?(?:,\s*|\s*\(|\s+(?="))"?([A-Z][A-Za-z ]+)""")


def test_design_citations_resolve():
    # Every module or test citing the design document names the file in the repo and sections it has.
    headings = [line.lstrip("#").strip() for line in (ROOT / "docs" / "DESIGN.md").read_text().splitlines()
                if line.startswith("#")]
    bad, cited = [], 0
    for folder in (*PACKAGES, "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == Path(__file__).resolve():  # this test's own patterns
                continue
            text = path.read_text(encoding="utf-8")
            for n, line in enumerate(text.splitlines(), 1):
                if "DESIGN.md" not in line:
                    continue
                cited += 1
                where = f"{path.relative_to(ROOT)}:{n}"
                if line.count("DESIGN.md") != line.count("docs/DESIGN.md"):
                    bad.append(f"{where}: cite docs/DESIGN.md (the file in this repo)")
                for section in CITED_SECTION.findall(line):
                    if not any(h.startswith(section.strip()) for h in headings):
                        bad.append(f"{where}: no section {section.strip()!r} in docs/DESIGN.md")
    assert cited > 5
    assert not bad, "\n".join(bad)
