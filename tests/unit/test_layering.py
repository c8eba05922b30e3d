"""The layering rules of CONTRIBUTING.md, read from the source: rgops/ imports neither Prefect nor
BentoML, only rgops/tracking.py and rgops/registry.py import mlflow, and no two rgops modules import
each other (module-level, lazy and type-only imports all count)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULES = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
           for p in (REPO / "rgops").rglob("*.py")}


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_rgops_imports_no_orchestrator_or_server_framework():
    bad = {m: sorted(i for i in _imports(p) if i.split(".")[0] in ("prefect", "bentoml"))
           for m, p in MODULES.items()}
    assert {m: v for m, v in bad.items() if v} == {}


def test_only_tracking_and_registry_import_mlflow():
    users = sorted(m for m, p in MODULES.items() if any(i.split(".")[0] == "mlflow" for i in _imports(p)))
    assert set(users) <= {"rgops.tracking", "rgops.registry"}, users


def test_no_two_rgops_modules_import_each_other():
    graph = {m: {i for i in _imports(p) if i in MODULES and i != m} for m, p in MODULES.items()}
    pairs = sorted((a, b) for a, deps in graph.items() for b in deps if a < b and a in graph.get(b, set()))
    assert pairs == []
