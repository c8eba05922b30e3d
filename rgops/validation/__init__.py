"""Data validation: expectation suites (``expectations/*.json``) run with Great Expectations 1.x.

``validate_cohort`` checks a raw cohort, ``validate_datasets`` an ingested datasets folder; both
return a :class:`ValidationReport` (``passed``, ``critical_failures``, ``warnings``,
``to_json()``, ``to_markdown()``). ``validate_path`` is the one validation step every caller uses
(data version attached, JSON written) and ``require_passed`` the one way it fails. Great Expectations is imported only when a suite runs.
"""

from rgops.validation.runner import (
    Outcome,
    ValidationReport,
    require_passed,
    validate_cohort,
    validate_datasets,
    validate_path,
    write_json,
)
from rgops.validation.suites import ValidateConfig

__all__ = ["Outcome", "ValidateConfig", "ValidationReport", "require_passed", "validate_cohort", "validate_datasets",
           "validate_path", "write_json"]
