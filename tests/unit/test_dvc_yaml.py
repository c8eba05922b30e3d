"""dvc.yaml lists, per stage, the exact params keys it reads and every rgops source file it runs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())

#: The library module behind each stage's command (the CLI calls one function of it).
STAGE_MODULES = {"synth": "rgops.data.synth", "validate_cohort": "rgops.validation",
                 "ingest": "rgops.data.ingest", "validate_datasets": "rgops.validation",
                 "train_cae": "rgops.training.run", "train_gan": "rgops.training.run",
                 "evaluate": "rgops.evaluation.evaluate"}


def _path(module: str) -> Path | None:
    for p in (REPO / (module.replace(".", "/") + ".py"), REPO / module.replace(".", "/") / "__init__.py"):
        if p.is_file():
            return p
    return None


def _closure(module: str, seen: set[str] | None = None) -> set[str]:
    """Every rgops module ``module`` imports, at module level or inside functions, and their packages."""
    seen = set() if seen is None else seen
    path = _path(module)
    if module in seen or path is None:
        return seen
    seen.add(module)
    parts = module.split(".")
    for i in range(1, len(parts)):
        _closure(".".join(parts[:i]), seen)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rgops"):
            _closure(node.module, seen)
            for alias in node.names:
                _closure(f"{node.module}.{alias.name}", seen)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("rgops"):
                    _closure(alias.name, seen)
    return seen


def test_every_stage_has_a_library_module():
    assert set(DVC) == set(STAGE_MODULES)


@pytest.mark.parametrize("stage", sorted(STAGE_MODULES))
def test_stage_deps_list_every_source_it_runs_and_nothing_missing(stage):
    deps = set(DVC[stage]["deps"])
    sources = {str(_path(m).relative_to(REPO)) for m in _closure(STAGE_MODULES[stage])} | {"rgops/cli.py"}
    assert sources - deps == set(), f"{stage} runs {sorted(sources - deps)} but does not list them"
    for dep in deps:
        assert (REPO / dep).exists() or dep.startswith(("data/", "models/", "reports/")), dep
    assert not any(d.rstrip("/") in ("rgops", "rgops/training", "rgops/validation", "rgops/evaluation")
                   for d in deps), "list files, not whole packages"


@pytest.mark.parametrize("stage", sorted(STAGE_MODULES))
def test_stage_params_are_exact_keys_that_exist(stage):
    keys = DVC[stage]["params"]
    for key in keys:
        assert key.count(".") >= 1, f"{stage} lists the whole section {key!r}; list the keys it reads"
        node = PARAMS
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"{stage}: params.yaml has no {key}"
            node = node[part]
    assert len(keys) == len(set(keys))


def test_header_names_a_command_that_exists():
    header = (REPO / "dvc.yaml").read_text().split("stages:")[0]
    makefile = (REPO / "Makefile").read_text()
    assert "make repro" not in header or "\nrepro:" in makefile
    assert "dvc repro" in header
