"""Prefect flow: validate the data before anything trains on it.

Resolves the data version (git revision + DVC hash of the validated folder), runs the expectation
suites (:mod:`rgops.validation`), attaches the summary as a Markdown artifact (key
``data-validation``) and fails the flow run when a critical expectation fails. Later flows call
:func:`validate_flow` first.

Run: ``python -m flows.validate COHORT`` or ``python -m flows.validate --datasets DIR``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from rgops.config import load_params
from rgops.errors import ConfigError, DataValidationError
from rgops.validation import ValidateConfig, ValidationReport, validate_cohort, validate_datasets, write_json
from rgops.lineage import data_version

ARTIFACT_KEY = "data-validation"


@task(retries=2, retry_delay_seconds=2)
def resolve_data_version(path: str) -> dict[str, Any]:
    """Git revision and DVC hash of ``path`` (I/O on git and DVC files: retried)."""
    return data_version(path)


@task
def run_validation(cohort: str | None, datasets: str | None, params: str, docs_out: str | None) -> ValidationReport:
    """Run the suites on a raw cohort or a datasets folder."""
    config = ValidateConfig.from_params(load_params(params))
    docs = Path(docs_out) if docs_out else None
    if cohort is not None:
        return validate_cohort(Path(cohort), config, docs)
    return validate_datasets(Path(datasets), config, docs)  # type: ignore[arg-type]


@flow(name="validate-data")
def validate_flow(cohort: str | None = None, datasets: str | None = None, params: str = "params.yaml",
                  json_out: str | None = None, docs_out: str | None = None) -> dict[str, Any]:
    """Validate a raw cohort (``cohort``) or an ingested datasets folder (``datasets``).

    Returns:
        The report as JSON (``ValidationReport.to_json()``), data version included.

    Raises:
        DataValidationError: a critical expectation failed (the flow run ends Failed; the
            message names the failed expectations).
        ConfigError: neither or both of ``cohort`` and ``datasets`` given.
    """
    if (cohort is None) == (datasets is None):
        raise ConfigError(f"give exactly one of cohort or datasets; got cohort={cohort!r}, datasets={datasets!r}")
    logger = get_run_logger()
    version = resolve_data_version(cohort or datasets)  # type: ignore[arg-type]
    report = run_validation(cohort, datasets, params, docs_out)
    report.data_version = version
    if json_out:
        write_json(report, Path(json_out))
    create_markdown_artifact(key=ARTIFACT_KEY, markdown=report.to_markdown(),
                             description=f"data validation of {report.target} {cohort or datasets}")
    logger.info(report.summary())
    if not report.passed:
        names = "; ".join(o.describe() for o in report.critical_failures)
        raise DataValidationError(f"{len(report.critical_failures)} critical expectation(s) failed: {names}")
    return report.to_json()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cohort", nargs="?")
    parser.add_argument("--datasets")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--json-out")
    parser.add_argument("--docs-out")
    args = parser.parse_args()
    validate_flow(args.cohort, args.datasets, args.params, args.json_out, args.docs_out)


if __name__ == "__main__":
    main()
