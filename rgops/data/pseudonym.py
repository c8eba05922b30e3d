"""Keyed pseudonyms for patients and DICOM UIDs.

The pseudonym of a patient is an HMAC-SHA256 of the source PatientID under a secret key, so the
same patient links across imaging, genomics and clinical tables without the identifier being kept,
and nobody without the key can recompute it from a guessed identifier.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from rgops.errors import ConfigError

log = logging.getLogger(__name__)

KEY_ENV = "RGOPS_PSEUDONYM_KEY"
KEY_FILE_ENV = "RGOPS_PSEUDONYM_KEY_FILE"
DEFAULT_KEY_FILE = Path(".rgops/pseudonym.key")
MIN_KEY_BYTES = 16


def load_key(create: bool = True) -> bytes:
    """Return the pseudonymisation key.

    Looks, in order, at ``RGOPS_PSEUDONYM_KEY``, the file named by ``RGOPS_PSEUDONYM_KEY_FILE``
    and ``.rgops/pseudonym.key`` in the working directory; with ``create`` the last is made with
    a fresh random key when nothing else is set.

    Raises:
        ConfigError: the key is shorter than 16 bytes, or absent and ``create`` is false.
    """
    raw = os.environ.get(KEY_ENV)
    source = KEY_ENV
    if raw is None:
        path = Path(os.environ.get(KEY_FILE_ENV, DEFAULT_KEY_FILE))
        source = str(path)
        if path.is_file():
            raw = path.read_text().strip()
        elif create and KEY_FILE_ENV not in os.environ:
            path.parent.mkdir(parents=True, exist_ok=True)
            raw = secrets.token_hex(32)
            path.write_text(raw + "\n")
            path.chmod(0o600)
            log.warning("no pseudonymisation key set: created %s (keep it secret and keep it: "
                        "the same key is needed to link new data to the same pseudonyms)", path)
        else:
            raise ConfigError(
                f"no pseudonymisation key: set {KEY_ENV} or point {KEY_FILE_ENV} at a key file "
                f"(looked at {source!r})"
            )
    key = raw.encode()
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(
            f"pseudonymisation key from {source} has {len(key)} bytes, expected at least "
            f"{MIN_KEY_BYTES}; use e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`"
        )
    return key


def pseudonymize(source_id: str, key: bytes) -> str:
    """The pseudonymous id of a patient: ``P-`` and 16 hex digits of HMAC-SHA256(key, id)."""
    digest = hmac.new(key, source_id.strip().encode(), hashlib.sha256).hexdigest()
    return f"P-{digest[:16]}"


def pseudonymous_uid(uid: str, key: bytes) -> str:
    """A deterministic replacement DICOM UID (``2.25.<decimal>``) for ``uid`` under ``key``.

    The same source UID always maps to the same new UID, so references between objects (a SEG's
    referenced series, a slice's study) survive de-identification.
    """
    digest = hmac.new(key, b"uid:" + uid.strip().encode(), hashlib.sha256).digest()
    # 2.25 + a 128-bit integer is at most 2 + 1 + 1 + 39 = 43 characters, within the 64 allowed.
    return "2.25." + str(int.from_bytes(digest[:16], "big"))
