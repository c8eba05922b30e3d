"""System programs the DICOM tests need (Debian packages): installed when missing and possible
(root with apt), else the test fails with the command to run. Never a skip."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

#: program -> Debian package
PACKAGES = {"Orthanc": "orthanc", "dciodvfy": "dicom3tools", "storescu": "dcmtk"}
PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def _install(packages: list[str]) -> str | None:
    """apt-get install ``packages``; None on success, else why not."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "not root or no apt-get here"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *packages]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            return f"`{' '.join(cmd)}` failed: {done.stderr[-500:]}"
    return None


def require(*programs: str, dicomweb: bool = False) -> None:
    """Make sure ``programs`` (keys of PACKAGES) are on PATH, and the Orthanc DICOMweb plugin when asked."""
    missing = [PACKAGES[p] for p in programs if not shutil.which(p)]
    if dicomweb and not os.path.exists(PLUGIN):
        missing.append("orthanc-dicomweb")
    if not missing:
        return
    why = _install(missing)
    still = [p for p in programs if not shutil.which(p)] + ([PLUGIN] if dicomweb and not os.path.exists(PLUGIN) else [])
    if why or still:
        pytest.fail(f"these tests need the Debian packages {missing} ({why or 'installed but not found'}); "
                    f"install them: `sudo apt-get install {' '.join(missing)}`")


def dciodvfy_errors(path: str) -> list[str]:
    """The lines of ``dciodvfy`` that report an error (it reports problems as lines starting 'Error')."""
    require("dciodvfy")
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]
