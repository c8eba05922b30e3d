"""Run the expectation suites with Great Expectations and summarise the result.

One batch per table through GX's pandas data source: for each table a dataframe asset, a
whole-dataframe batch definition, the suite, a validation definition and a checkpoint that runs
it. Runs use one ephemeral GX context per process (GX is slow to start); Data Docs, when asked
for, come from a file context whose site is written to the requested folder.

Severity: an expectation whose ``meta.severity`` is ``critical`` fails the run; ``warning`` is
reported and does not block. Offending rows are named by the suite's id column (a pseudonymous
id or a gene symbol), never by a source identifier.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from rgops.validation.suites import COHORT_SUITES, DATASETS_SUITES, Suite, ValidateConfig, load_suites, to_gx_suite
from rgops.validation.tables import Progress, cohort_tables, datasets_tables

log = logging.getLogger(__name__)

DATASOURCE = "rgops"
_CONTEXT: Any = None
#: Suites registered in the cached context, by name, with the JSON they were built from: a suite
#: whose thresholds changed is registered again.
_REGISTERED: dict[str, str] = {}
_SKIP_KWARGS = frozenset({"column", "batch_id", "result_format", "catch_exceptions", "include_config"})


@dataclass(frozen=True)
class Outcome:
    """The result of one expectation on one table.

    Attributes:
        table: the table (suite) name.
        expectation: the GX expectation type.
        column: the column it checks (None for table-level expectations).
        severity: ``critical`` or ``warning``.
        success: whether it held.
        rule: its thresholds in short (``min_value=0.3, max_value=1.5``).
        element_count: rows checked.
        unexpected_count: rows that broke it (None for aggregate expectations).
        observed: the observed value of an aggregate expectation (a mean, missing genes).
        examples: up to ``validate.examples`` offending rows ``{"id": ..., "value": ...}``.
        error: the exception GX caught, when the expectation could not run (a missing column).
    """

    table: str
    expectation: str
    column: str | None
    severity: str
    success: bool
    rule: str
    element_count: int | None = None
    unexpected_count: int | None = None
    observed: Any = None
    examples: tuple[dict[str, Any], ...] = ()
    error: str | None = None

    @property
    def label(self) -> str:
        return f"{self.table}.{self.column or '*'}: {self.expectation}"

    def describe(self) -> str:
        """One line: severity, what failed, how many rows, example offending ids."""
        return f"{self.severity.upper():8s} {self.detail()}"

    def detail(self) -> str:
        """What failed, how many rows, example offending ids (values only when numeric)."""
        parts = [f"{self.label}({self.rule})"]
        if self.error:
            parts.append(f"could not run: {self.error}")
        elif self.unexpected_count is not None:
            parts.append(f"{self.unexpected_count} of {self.element_count} rows")
        if self.observed is not None:
            parts.append(f"observed {self.observed}")
        if self.examples:
            shown = ", ".join(f"{e['id']} ({e['value']})" if "value" in e else str(e["id"]) for e in self.examples)
            parts.append(f"e.g. {shown}")
        return " - ".join(parts)


@dataclass
class ValidationReport:
    """What a validation run found.

    Attributes:
        target: ``cohort`` or ``datasets``.
        tables: rows per table that was checked.
        outcomes: one per expectation run.
        skipped: suites not run because their table is absent (e.g. no instances.parquet).
        linkage: for a cohort, drop reason -> pseudonymous ids of the patients ingest would drop.
        seconds: wall time per table (building excluded) and ``build`` for building the tables.
        docs: the Data Docs index.html, when written.
        data_version: filled by callers that know it (git rev, DVC hash).
    """

    target: str
    tables: dict[str, int]
    outcomes: list[Outcome]
    skipped: list[str] = field(default_factory=list)
    linkage: dict[str, list[str]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    docs: str | None = None
    data_version: dict[str, Any] | None = None

    @property
    def critical_failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.success and o.severity == "critical"]

    @property
    def warnings(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.success and o.severity == "warning"]

    @property
    def passed(self) -> bool:
        """True when no critical expectation failed."""
        return not self.critical_failures

    def failed(self, table: str, column: str | None = None, expectation: str | None = None) -> list[Outcome]:
        """Failed outcomes filtered by table and optionally column and expectation type."""
        return [o for o in self.outcomes if not o.success and o.table == table
                and (column is None or o.column == column) and (expectation is None or o.expectation == expectation)]

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the whole report."""
        return {
            "passed": self.passed, "target": self.target,
            "n_expectations": len(self.outcomes), "n_critical_failures": len(self.critical_failures),
            "n_warnings": len(self.warnings), "tables": self.tables, "skipped": self.skipped,
            "linkage": self.linkage, "seconds": self.seconds, "docs": self.docs,
            "data_version": self.data_version,
            "outcomes": [_jsonable(asdict(o)) for o in self.outcomes],
        }

    def summary(self) -> str:
        """A concise terminal summary: verdict, each failed expectation, linkage drops."""
        verdict = "PASSED" if self.passed else "FAILED"
        lines = [f"validation {verdict} ({self.target}): {len(self.critical_failures)} critical, "
                 f"{len(self.warnings)} warning(s) of {len(self.outcomes)} expectations on "
                 f"{len(self.tables)} tables ({', '.join(f'{t} {n}' for t, n in self.tables.items())} rows)"]
        lines += ["  " + o.describe() for o in self.critical_failures + self.warnings]
        if self.linkage:
            dropped = ", ".join(f"{r} {len(ids)}" for r, ids in self.linkage.items())
            lines.append(f"  linkage: patients ingest would drop by reason: {dropped}")
        if self.skipped:
            lines.append(f"  not run (table absent): {', '.join(self.skipped)}")
        if self.docs:
            lines.append(f"  data docs: {self.docs}")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """The summary as Markdown: verdict, a table of failed expectations, rows per table."""
        verdict = "PASSED" if self.passed else "FAILED"
        out = [f"## Data validation {verdict} ({self.target})", "",
               f"{len(self.critical_failures)} critical failure(s), {len(self.warnings)} warning(s), "
               f"{len(self.outcomes)} expectations.", ""]
        if self.data_version:
            out += ["Data version: " + ", ".join(f"{k} `{v}`" for k, v in self.data_version.items()), ""]
        failed = self.critical_failures + self.warnings
        if failed:
            out += ["| severity | table | column | expectation | rule | unexpected | examples |",
                    "| --- | --- | --- | --- | --- | --- | --- |"]
            for o in failed:
                unexpected = (f"could not run: {o.error}" if o.error else
                              f"{o.unexpected_count} / {o.element_count}" if o.unexpected_count is not None
                              else f"observed {o.observed}")
                ex = ", ".join(f"{e['id']} ({e['value']})" if "value" in e else str(e["id"]) for e in o.examples)
                cells = [o.severity, o.table, o.column or "", o.expectation, o.rule, unexpected, ex]
                out.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
            out.append("")
        out += ["| table | rows | expectations | failed |", "| --- | --- | --- | --- |"]
        for table, rows in self.tables.items():
            mine = [o for o in self.outcomes if o.table == table]
            out.append(f"| {table} | {rows} | {len(mine)} | {sum(not o.success for o in mine)} |")
        if self.linkage:
            out += ["", "Patients ingest would drop: " + ", ".join(f"{r}: {len(i)}" for r, i in self.linkage.items())]
        return "\n".join(out) + "\n"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


def _context() -> Any:
    """The process-wide ephemeral GX context, created on first use."""
    global _CONTEXT
    if _CONTEXT is None:
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        ctx = gx.get_context(mode="ephemeral")
        ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        ctx.data_sources.add_pandas(DATASOURCE)
        _CONTEXT = ctx
        _REGISTERED.clear()
    return _CONTEXT


def _register(ctx: Any, suite: Suite, docs_site: str | None, registered: dict[str, str],
              result_format: dict[str, Any]) -> Any:
    """Make sure the context holds asset, batch definition, suite, validation definition and a
    checkpoint for ``suite``; return the checkpoint."""
    import great_expectations as gx

    fingerprint = json.dumps([suite.expectations, suite.meta, result_format], sort_keys=True, default=str)
    name = suite.name
    if registered.get(name) == fingerprint:
        return ctx.checkpoints.get(name)
    source = ctx.data_sources.get(DATASOURCE)
    try:
        asset = source.get_asset(suite.table)
    except LookupError:
        asset = source.add_dataframe_asset(suite.table)
    try:
        batch_def = asset.get_batch_definition("whole")
    except KeyError:
        batch_def = asset.add_batch_definition_whole_dataframe("whole")
    if name in registered:
        ctx.checkpoints.delete(name)
        ctx.validation_definitions.delete(name)
        ctx.suites.delete(name)
    gx_suite = ctx.suites.add(to_gx_suite(suite))
    vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch_def, suite=gx_suite))
    actions = [gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[docs_site])] if docs_site else []
    checkpoint = ctx.checkpoints.add(gx.Checkpoint(name=name, validation_definitions=[vd], actions=actions,
                                                   result_format=result_format))
    registered[name] = fingerprint
    return checkpoint


def _rule(kwargs: dict[str, Any]) -> str:
    shown = []
    for k, v in kwargs.items():
        if k in _SKIP_KWARGS or v is None:
            continue
        if isinstance(v, (list, tuple)) and len(v) > 6:
            v = f"[{len(v)} values]"
        shown.append(f"{k}={v}")
    return ", ".join(shown)


def _quotable(value: Any) -> bool:
    """Whether an offending value may be quoted in a report: numbers and booleans only. A text cell
    (a clinical free-text field, a DICOM string) may carry a name; the report names it by column and
    pseudonym instead."""
    import numbers

    import numpy as np

    return isinstance(value, (bool, numbers.Number, np.bool_, np.number))


def _outcome(suite: Suite, index: int, res: Any, n_examples: int) -> Outcome:
    cfg = suite.expectations[index]
    kwargs = dict(cfg.get("kwargs", {}))
    column = kwargs.get("column")
    result = dict(res.result or {})
    error = None
    info = res.exception_info or {}
    # GX gives either one {"raised_exception", "exception_message"} or one such dict per metric.
    infos = [info] if isinstance(info, dict) and "raised_exception" in info else (
        [v for v in info.values() if isinstance(v, dict)] if isinstance(info, dict) else [])
    for item in infos:
        if item.get("raised_exception") or item.get("exception_message"):
            msg = str(item.get("exception_message") or "exception").strip()
            error = (msg.splitlines() or ["exception"])[-1][:300]
            break
    examples: list[dict[str, Any]] = []
    seen: set[str] = set()
    for row in result.get("partial_unexpected_index_list") or []:
        if not isinstance(row, dict):
            continue
        ident = row.get(suite.id_column)
        if ident is None or str(ident) in seen:
            continue
        seen.add(str(ident))
        ex: dict[str, Any] = {"id": _jsonable(ident)}
        if column is not None and column != suite.id_column and column in row and _quotable(row[column]):
            ex["value"] = _jsonable(row[column])
        examples.append(ex)
        if len(examples) >= n_examples:
            break
    observed = result.get("observed_value")
    if cfg["type"] == "expect_column_distinct_values_to_contain_set":
        # GX 1.24 reports the absent values as partial_missing_list/missing_count; older
        # releases gave the observed distinct values.
        if "partial_missing_list" in result:
            missing = sorted(map(str, result.get("partial_missing_list") or []))
            n_missing = int(result.get("missing_count") or len(missing))
        else:
            seen = set(observed) if isinstance(observed, (list, tuple)) else set()
            missing = sorted(set(kwargs.get("value_set") or []) - seen) if not res.success else []
            n_missing = len(missing)
        observed = {"missing": missing[:n_examples], "n_missing": n_missing} if missing else None
        examples = [{"id": g} for g in missing[:n_examples]]
    elif isinstance(observed, (list, tuple, dict)):
        observed = None
    return Outcome(
        table=suite.table, expectation=cfg["type"], column=column, severity=suite.severity(index),
        success=bool(res.success), rule=_rule(kwargs),
        element_count=_jsonable(result.get("element_count")),
        unexpected_count=_jsonable(result.get("unexpected_count")),
        observed=_jsonable(observed), examples=tuple(examples), error=error,
    )


def run_suites(tables: dict[str, pd.DataFrame], suites: dict[str, Suite], config: ValidateConfig,
               target: str, docs_dir: Path | None = None) -> ValidationReport:
    """Validate each table with its suite and collect a report.

    Args:
        tables: DataFrames keyed by table name (``suite.table``).
        suites: the suites to run, keyed by name; a suite whose table is absent is skipped.
        config: thresholds (used here for the number of examples).
        target: ``cohort`` or ``datasets``, for the report.
        docs_dir: write Great Expectations Data Docs (HTML) here; ``index.html`` is the entry.
    """
    if docs_dir is None:
        ctx, site, registered, tmp = _context(), None, _REGISTERED, None
    else:
        ctx, site, registered, tmp = _docs_context(Path(docs_dir))
    outcomes: list[Outcome] = []
    rows: dict[str, int] = {}
    skipped: list[str] = []
    seconds: dict[str, float] = {}
    try:
        for name, suite in suites.items():
            df = tables.get(suite.table)
            if df is None:
                log.info("suite %s not run: no %s table", name, suite.table)
                skipped.append(name)
                continue
            t0 = time.perf_counter()
            result_format: dict[str, Any] = {"result_format": "SUMMARY",
                                             "partial_unexpected_count": max(20, 4 * config.examples)}
            if suite.id_column in df.columns:
                result_format["unexpected_index_column_names"] = [suite.id_column]
            checkpoint = _register(ctx, suite, site, registered, result_format)
            result = checkpoint.run(batch_parameters={"dataframe": df})
            suite_result = next(iter(result.run_results.values()))
            by_id = {str(r.expectation_config.id): r for r in suite_result.results}
            gx_suite = ctx.suites.get(name)
            for i, exp in enumerate(gx_suite.expectations):
                res = by_id.get(str(exp.id))
                if res is not None:
                    outcomes.append(_outcome(suite, i, res, config.examples))
            rows[suite.table] = len(df)
            seconds[suite.table] = round(time.perf_counter() - t0, 4)
        docs = None
        if site is not None:
            index = Path(docs_dir) / "index.html"  # type: ignore[arg-type]
            docs = str(index) if index.is_file() else None
    finally:
        if tmp is not None:
            tmp.cleanup()
    return ValidationReport(target, rows, outcomes, skipped, seconds=seconds, docs=docs)


def _docs_context(docs_dir: Path) -> tuple[Any, str, dict[str, str], tempfile.TemporaryDirectory]:
    """A throw-away file context whose Data Docs site is ``docs_dir``."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    docs_dir.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.TemporaryDirectory(prefix="rgops-gx-")
    ctx = gx.get_context(mode="file", project_root_dir=tmp.name)
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    site = "rgops"
    ctx.add_data_docs_site(site_name=site, site_config={
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir.resolve())},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    })
    ctx.data_sources.add_pandas(DATASOURCE)
    return ctx, site, {}, tmp


def _linkage_drops(linkage: pd.DataFrame) -> dict[str, list[str]]:
    dropped = linkage[linkage["drop_reason"] != ""]
    return {str(reason): sorted(map(str, group["pseudo_id"])) for reason, group in dropped.groupby("drop_reason")}


def validate_tables(tables: dict[str, pd.DataFrame], config: ValidateConfig, target: str,
                    suite_names: tuple[str, ...], out_dir: Path | None = None,
                    suite_dir: Path | None = None) -> ValidationReport:
    """Run the named suites on tables already built (used by both entry points and the bench)."""
    suites = load_suites(suite_names, config, suite_dir)
    report = run_suites(tables, suites, config, target, out_dir)
    if "linkage" in tables:
        report.linkage = _linkage_drops(tables["linkage"])
    return report


def validate_cohort(cohort: Path, config: ValidateConfig, out_dir: Path | None = None, *,
                    key: bytes | None = None, progress: Progress | None = None,
                    suite_dir: Path | None = None) -> ValidationReport:
    """Validate a raw cohort folder (imaging, series, SEG, genes, samples, clinical, linkage).

    Args:
        cohort: the folder written by ``rgops synth`` (or handed over by a hospital).
        config: the ``validate:`` parameters.
        out_dir: write Great Expectations Data Docs (HTML) here; None for no docs.
        key: pseudonymisation key (default :func:`rgops.data.pseudonym.load_key`).
        progress: ``progress(done, total)`` while DICOM headers are read.
        suite_dir: folder of the suite JSON files (default ``expectations/``).

    Raises:
        CohortError: the cohort is not laid out as documented (missing ct/, genes.tsv, ...).
    """
    from rgops.data.pseudonym import load_key

    return _build_and_validate(lambda: cohort_tables(cohort, key if key is not None else load_key(), progress),
                               config, "cohort", COHORT_SUITES, out_dir, suite_dir)


def validate_datasets(datasets: Path, config: ValidateConfig, out_dir: Path | None = None, *,
                      suite_dir: Path | None = None) -> ValidationReport:
    """Validate an ingested datasets folder (patches, gene matrix, split, clinical, instances).

    Raises:
        DatasetError: the folder lacks files or its arrays do not line up.
    """
    return _build_and_validate(lambda: datasets_tables(datasets), config, "datasets", DATASETS_SUITES, out_dir,
                               suite_dir)


def _build_and_validate(build: Any, config: ValidateConfig, target: str, suites: tuple[str, ...],
                        out_dir: Path | None, suite_dir: Path | None) -> ValidationReport:
    """Build the tables (timed as ``seconds["build"]``) and run the target's suites on them."""
    t0 = time.perf_counter()
    tables = build()
    built = time.perf_counter() - t0
    report = validate_tables(tables, config, target, suites, out_dir, suite_dir)
    report.seconds["build"] = round(built, 4)
    log.info("validated %s: %d critical failure(s), %d warning(s)", target, len(report.critical_failures),
             len(report.warnings))
    return report


def write_json(report: ValidationReport, path: Path) -> None:
    """Write ``report.to_json()`` to ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_json(), indent=2, sort_keys=False))


def validate_path(path: str | Path, config: ValidateConfig, *, datasets: bool = False,
                  docs_out: str | Path | None = None, json_out: str | Path | None = None,
                  progress: Progress | None = None) -> ValidationReport:
    """Validate a raw cohort (or, with ``datasets``, an ingested datasets folder): the one validation
    step of ``rgops validate``, the DVC stages, ``flows/validate.py`` and the retrain flow.

    The report carries the data version (:func:`rgops.lineage.data_version`: git revision and DVC
    hash) and is written to ``json_out`` when given. It does not raise on failed expectations: callers
    show or attach the report first, then call :func:`require_passed`.
    """
    from rgops.lineage import data_version

    docs = Path(docs_out) if docs_out is not None else None
    if datasets:
        report = validate_datasets(Path(path), config, docs)
    else:
        report = validate_cohort(Path(path), config, docs, progress=progress)
    report.data_version = data_version(path)
    if json_out is not None:
        write_json(report, Path(json_out))
    return report


def require_passed(report: ValidationReport) -> None:
    """The one way validation fails: a :class:`~rgops.errors.DataValidationError` naming each failed
    critical expectation (column, rule, offending pseudonyms) and the data version.

    Raises:
        DataValidationError: a critical expectation failed.
    """
    from rgops.errors import DataValidationError

    if report.passed:
        return
    failed = "; ".join(o.detail() for o in report.critical_failures)
    version = report.data_version or {}
    where = f"{report.target} {version.get('path', '')}".strip()
    raise DataValidationError(
        f"{len(report.critical_failures)} critical expectation(s) failed: {failed}; {where} (data "
        f"{str(version.get('dvc_hash'))[:12]}) was not accepted: fix the data, or the suites in expectations/, "
        "then validate again")
