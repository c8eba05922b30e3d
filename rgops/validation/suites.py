"""Expectation suites: JSON in ``expectations/``, thresholds from the ``validate:`` section of params.

A suite file is Great Expectations 1.x JSON (``{"name", "meta", "expectations": [...]}``) with
two rgops conventions:

* every expectation's ``meta.severity`` is ``"critical"`` (fails the run) or ``"warning"``
  (reported, does not block); it is also copied into GX's own ``severity`` field;
* a kwarg value written as ``"$name"`` or ``"$name.0"`` is replaced by the field ``name`` of
  :class:`ValidateConfig` (``.0``/``.1`` index a pair, ``.key`` a nested mapping), so no
  threshold lives in the JSON.

The suite's ``meta.table`` names the table it checks and ``meta.id_column`` the column whose
values identify offending rows in reports (a pseudonymous id or a gene symbol, never a source id).

This module does not import Great Expectations; :func:`to_gx_suite` does, lazily.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rgops.config import from_dict, section, to_dict
from rgops.errors import ConfigError

log = logging.getLogger(__name__)

SEVERITIES = ("critical", "warning")
#: The suites in ``expectations/``, in the order a raw-cohort run reports them.
COHORT_SUITES = ("imaging", "series", "segmentations", "genes", "samples", "clinical", "linkage")
#: The suites run on an ingested datasets folder.
DATASETS_SUITES = ("imaging", "segmentations", "clinical", "datasets_patches", "datasets_genes")
DEFAULT_SUITE_DIR = Path(__file__).resolve().parents[2] / "expectations"


@dataclass(frozen=True)
class Vocabulary:
    """Controlled vocabularies of the categorical clinical fields."""

    sex: tuple[str, ...] = ("F", "M")
    smoking_status: tuple[str, ...] = ("never", "former", "current")
    histology: tuple[str, ...] = ("adenocarcinoma", "squamous cell carcinoma", "large cell carcinoma", "NSCLC NOS")
    egfr_status: tuple[str, ...] = ("wildtype", "mutant", "unknown")
    kras_status: tuple[str, ...] = ("wildtype", "mutant", "unknown")


@dataclass(frozen=True)
class ValidateConfig:
    """The ``validate:`` section of params.yaml: every threshold the suites use.

    Ranges are inclusive ``(low, high)`` pairs.
    """

    pixel_spacing_mm: tuple[float, float] = (0.3, 2.0)
    slice_thickness_mm: tuple[float, float] = (0.5, 5.0)
    image_size_px: tuple[int, int] = (32, 1024)
    min_slices_per_series: int = 3
    hu_range: tuple[float, float] = (-1100.0, 4000.0)
    max_missing_fraction_gene: float = 0.2
    max_missing_fraction_sample: float = 0.2
    required_genes: tuple[str, ...] = ()
    age_years: tuple[float, float] = (18.0, 100.0)
    pack_years: tuple[float, float] = (0.0, 200.0)
    vocabulary: Vocabulary = field(default_factory=Vocabulary)
    min_linked_fraction: float = 0.8
    patch_sizes: tuple[int, ...] = (64, 128)
    patch_value_range: tuple[float, float] = (-1.0, 1.0)
    gene_train_mean_range: tuple[float, float] = (-0.1, 0.1)
    gene_train_sd_range: tuple[float, float] = (0.8, 1.2)
    examples: int = 5

    def __post_init__(self) -> None:
        for name in ("pixel_spacing_mm", "slice_thickness_mm", "image_size_px", "hu_range", "age_years",
                     "pack_years", "patch_value_range", "gene_train_mean_range", "gene_train_sd_range"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ConfigError(f"validate.{name}: low {lo} is above high {hi}; write [low, high]")
        for name in ("max_missing_fraction_gene", "max_missing_fraction_sample", "min_linked_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"validate.{name}: got {v}, expected a fraction in [0, 1]")
        if self.examples < 1:
            raise ConfigError(f"validate.examples: got {self.examples}, expected at least 1")

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "ValidateConfig":
        """Read the ``validate:`` section (absent section: defaults)."""
        if "validate" not in params:
            return cls()
        return from_dict(cls, section(params, "validate"), "validate")


@dataclass(frozen=True)
class Suite:
    """A suite as loaded from JSON with thresholds substituted (plain data, no GX objects)."""

    name: str
    table: str
    id_column: str
    expectations: tuple[dict[str, Any], ...]
    meta: dict[str, Any]

    def severity(self, index: int) -> str:
        return str(self.expectations[index]["meta"]["severity"])


def _lookup(config: ValidateConfig, ref: str, where: str) -> Any:
    node: Any = to_dict(config)
    for part in ref.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise ConfigError(f"{where}: placeholder ${ref} names no validate parameter; "
                              f"known parameters are {sorted(to_dict(config))}")
    return node


def _substitute(value: Any, config: ValidateConfig, where: str) -> Any:
    if isinstance(value, str) and value.startswith("$"):
        return _lookup(config, value[1:], where)
    if isinstance(value, list):
        return [_substitute(v, config, where) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, config, f"{where}.{k}") for k, v in value.items()}
    return value


def load_suite(name: str, config: ValidateConfig, suite_dir: Path | None = None) -> Suite:
    """Load ``<suite_dir>/<name>.json`` and substitute its thresholds.

    Raises:
        ConfigError: the file is missing or malformed, a severity is unknown, or a placeholder
            names no parameter.
    """
    path = (suite_dir or DEFAULT_SUITE_DIR) / f"{name}.json"
    if not path.is_file():
        raise ConfigError(f"expectation suite {str(path)!r} not found; expected one JSON file per table "
                          f"in {str(suite_dir or DEFAULT_SUITE_DIR)!r}")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"expectation suite {str(path)!r} is not valid JSON: {exc}") from exc
    meta = raw.get("meta") or {}
    if "table" not in meta or "id_column" not in meta:
        raise ConfigError(f"expectation suite {str(path)!r}: meta must name 'table' and 'id_column'")
    expectations = []
    for i, exp in enumerate(raw.get("expectations", [])):
        where = f"{path.name}: expectations[{i}] ({exp.get('type')})"
        sev = (exp.get("meta") or {}).get("severity")
        if sev not in SEVERITIES:
            raise ConfigError(f"{where}: meta.severity is {sev!r}, expected one of {list(SEVERITIES)}")
        exp = copy.deepcopy(exp)
        exp["kwargs"] = _substitute(exp.get("kwargs", {}), config, where)
        expectations.append(exp)
    if not expectations:
        raise ConfigError(f"expectation suite {str(path)!r} holds no expectations")
    return Suite(str(raw.get("name", name)), str(meta["table"]), str(meta["id_column"]), tuple(expectations),
                 dict(meta))


def load_suites(names: tuple[str, ...], config: ValidateConfig, suite_dir: Path | None = None) -> dict[str, Suite]:
    """Load several suites by name (see :func:`load_suite`)."""
    return {n: load_suite(n, config, suite_dir) for n in names}


def to_gx_suite(suite: Suite) -> Any:
    """The suite as a ``great_expectations.ExpectationSuite`` (GX severity set from meta)."""
    import great_expectations as gx

    expectations = []
    for exp in suite.expectations:
        exp = copy.deepcopy(exp)
        exp["severity"] = exp["meta"]["severity"]
        expectations.append(exp)
    try:
        return gx.ExpectationSuite(name=suite.name, expectations=expectations, meta=dict(suite.meta))
    except Exception as exc:  # GX raises pydantic/its own errors for an unknown type or bad kwargs
        raise ConfigError(f"expectation suite {suite.name!r} is not a valid GX 1.x suite: {exc}") from exc
