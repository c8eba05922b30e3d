"""What a served request does, without the web framework: the domain logic behind ``services/``.

One module per responsibility:

* :mod:`rgops.serving.config`: :class:`ServeConfig`, the ``serve:`` section of ``params.yaml``;
* :mod:`rgops.serving.slots`: :class:`ServedModel`, :class:`ModelSlot` (follows a registry alias,
  swapping versions without pulling a model from under a request) and :func:`registry_source`;
* :mod:`rgops.serving.uploads`: client bytes -> arrays and pydicom datasets (``.npy``, DICOM, zips);
* :mod:`rgops.serving.extract`: patches (ready, or cut from de-identified DICOM with ingest's own
  code and the model card's patch contract) -> the CAE's latent and program scores;
* :mod:`rgops.serving.generate`: a raw gene profile -> normalised with the model's panel -> the
  GAN's images, PNG and DICOM Secondary Capture.

Every error a client can cause is an :class:`~rgops.errors.RgopsError`; ``services/errors.py``
maps them to HTTP status codes. Nothing here logs identifiers or payloads: log lines carry counts,
shapes, versions and timings. The names below are re-exported for callers that use
``from rgops import serving``.
"""

from rgops.errors import RgopsError
from rgops.serving.config import ServeConfig
from rgops.serving.extract import (
    NO_PROGRAM_HEAD,
    SEGMENTATION_STORAGE,
    Features,
    check_patches,
    check_scale,
    encode,
    encode_items,
    extract_dicom,
    patch_from_dicom,
)
from rgops.serving.generate import (
    NormalisedProfile,
    generate,
    normalise_profile,
    png,
    profile_from_tsv,
    secondary_captures,
    strip,
    traversal,
)
from rgops.serving.batching import GreedyBatcher
from rgops.serving.slots import CAE_MODEL, GAN_MODEL, ModelSlot, Reloader, ServedModel, registry_source
from rgops.serving.uploads import is_npy, read_dicom_upload, read_npy_mask, read_npy_patches

__all__ = [
    "CAE_MODEL", "GAN_MODEL", "NO_PROGRAM_HEAD", "SEGMENTATION_STORAGE", "Features", "GreedyBatcher", "ModelSlot", "Reloader",
    "NormalisedProfile", "RgopsError", "ServeConfig", "ServedModel", "check_patches", "check_scale", "encode",
    "encode_items", "extract_dicom", "generate", "is_npy", "normalise_profile", "patch_from_dicom", "png", "profile_from_tsv",
    "read_dicom_upload", "read_npy_mask", "read_npy_patches", "registry_source", "secondary_captures",
    "strip", "traversal",
]
