"""Typed errors of rgops.

Every error raised on purpose by rgops derives from :class:`RgopsError`, and most also derive from
the builtin they refine, so ``except ValueError`` in a caller's code keeps working. Each message
says what was received, what was expected and what to do about it.

Exception tree::

    RgopsError
    ├── ConfigError (ValueError)            params.yaml / CLI options that do not fit
    ├── CohortError (ValueError)            a cohort folder that is not laid out as documented
    ├── DicomError (ValueError)             a DICOM file that cannot be used
    │   ├── DicomDecodeError                pixel data in a transfer syntax we cannot decode
    │   ├── SegmentationError               a SEG missing, empty or not referencing its series
    │   └── StudyError                      a study with no usable CT + segmentation (names its series)
    ├── DeidentificationError (ValueError)  de-identification could not be guaranteed
    ├── GeneTableError (ValueError)         gene-expression table malformed (NaN ids, duplicates, text)
    ├── GeneMismatchError (KeyError)        a profile whose genes do not match a model's gene panel
    ├── DatasetError (ValueError)           an ingested datasets folder that is missing or malformed
    ├── ShapeError (ValueError)             a tensor of the wrong shape at a public boundary
    ├── EvaluationError (ValueError)        an evaluation that cannot be run as asked (too few patients)
    ├── DataValidationError                 critical data-validation expectations failed
    ├── TrainingError (RuntimeError)        training could not proceed (bad checkpoint, diverged)
    ├── TrackingError (RuntimeError)        the MLflow tracking server is unreachable or refused
    ├── RegistryError (LookupError)         a model/version/alias that does not exist
    │   └── PromotionRefused                a promotion gate failed (names gate and both numbers)
    ├── IntegrityError (ValueError)         an artifact whose SHA-256 does not match its record
    └── PacsError (ConnectionError)         the PACS (DICOMweb) is unreachable or refused a request
        └── StudyNotFound (LookupError)     no such study/series on the PACS

Services map these to HTTP status codes in one place (``services/errors.py``).
"""

from __future__ import annotations


class RgopsError(Exception):
    """Root of every error rgops raises on purpose."""


class ConfigError(RgopsError, ValueError):
    """A configuration value (params.yaml, CLI option, environment) that does not fit."""


class CohortError(RgopsError, ValueError):
    """A cohort folder that is not laid out as docs/architecture.md describes."""


class DicomError(RgopsError, ValueError):
    """A DICOM file that cannot be used."""


class DicomDecodeError(DicomError):
    """Pixel data in a transfer syntax that no installed decoder handles."""


class SegmentationError(DicomError):
    """A tumour segmentation that is missing, empty, or does not reference its CT series."""


class StudyError(DicomError):
    """A study (upload, media or PACS study) without a usable CT series and segmentation."""


class DeidentificationError(RgopsError, ValueError):
    """De-identification could not be guaranteed for a dataset."""


class GeneTableError(RgopsError, ValueError):
    """A gene-expression table that is malformed (missing ids, duplicates, non-numeric values)."""


class GeneMismatchError(RgopsError, KeyError):
    """A gene profile whose genes do not match the gene panel a model was trained on."""

    def __str__(self) -> str:  # KeyError quotes its message; show it as written.
        return str(self.args[0]) if self.args else ""


class DatasetError(RgopsError, ValueError):
    """An ingested datasets folder that is missing files or holds inconsistent arrays."""


class ShapeError(RgopsError, ValueError):
    """A tensor or array with the wrong shape at a public boundary."""


class EvaluationError(RgopsError, ValueError):
    """An evaluation that cannot be run as asked (too few patients for a probe, unknown feature set)."""


class DataValidationError(RgopsError):
    """Critical data-validation expectations failed; training must not proceed."""


class TrainingError(RgopsError, RuntimeError):
    """Training could not proceed (unusable checkpoint, non-finite loss, ...)."""


class TrackingError(RgopsError, RuntimeError):
    """The MLflow tracking store is unreachable or refused a request."""


class RegistryError(RgopsError, LookupError):
    """A registered model, version or alias that does not exist or cannot be changed."""


class PromotionRefused(RegistryError):
    """A promotion gate failed; the message names the gate and both numbers."""


class IntegrityError(RgopsError, ValueError):
    """An artifact whose SHA-256 does not match the digest recorded for it."""


class PacsError(RgopsError, ConnectionError):
    """The PACS (DICOMweb) is unreachable, refused our credentials, or answered a request with an error."""


class StudyNotFound(PacsError, LookupError):
    """A study or series the PACS does not hold."""


class LimitExceeded(RgopsError, ValueError):
    """A request that asks the server to read more than a configured limit (``serve:`` in params.yaml):
    bytes after decompression, zip members, pixels, patches. The message names the limit and its key."""


class ServiceUnavailable(RgopsError, RuntimeError):
    """No model is loaded yet (the registry is unreachable or the alias unset): retry after a while."""
