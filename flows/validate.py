"""Prefect flow: validate the data before anything trains on it.

A thin shell over :func:`rgops.validation.validate_path` (the expectation suites plus the data
version: git revision + DVC hash of the validated folder), the same step the CLI and the retrain flow
run: it attaches the summary as a Markdown artifact (key ``data-validation``) and fails the flow run
through :func:`rgops.validation.require_passed` when a critical expectation fails.

Run: ``python -m flows.validate COHORT`` or ``python -m flows.validate --datasets DIR``.
"""

from __future__ import annotations

import argparse
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from rgops.config import load_params
from rgops.errors import ConfigError
from rgops.validation import ValidateConfig, require_passed, validate_path

ARTIFACT_KEY = "data-validation"

validate_task = task(validate_path, name="validate")


@flow(name="validate-data")
def validate_flow(cohort: str | None = None, datasets: str | None = None, params: str = "params.yaml",
                  json_out: str | None = None, docs_out: str | None = None) -> dict[str, Any]:
    """Validate a raw cohort (``cohort``) or an ingested datasets folder (``datasets``):
    :func:`rgops.validation.validate_path`, the report as a Markdown artifact, then
    :func:`rgops.validation.require_passed`.

    Returns:
        The report as JSON (``ValidationReport.to_json()``), data version included.

    Raises:
        DataValidationError: a critical expectation failed (the flow run ends Failed; the
            message names the failed expectations).
        ConfigError: neither or both of ``cohort`` and ``datasets`` given.
    """
    if (cohort is None) == (datasets is None):
        raise ConfigError(f"give exactly one of cohort or datasets; got cohort={cohort!r}, datasets={datasets!r}")
    config = ValidateConfig.from_params(load_params(params))
    report = validate_task(cohort or datasets, config, datasets=datasets is not None, docs_out=docs_out,
                           json_out=json_out)
    create_markdown_artifact(key=ARTIFACT_KEY, markdown=report.to_markdown(),
                             description=f"data validation of {report.target} {cohort or datasets}")
    get_run_logger().info(report.summary())
    require_passed(report)
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
