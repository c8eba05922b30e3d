"""Shared fixtures.

Environment for every test: no analytics, a pseudonymisation key, and tool homes (MLflow, Prefect,
BentoML) inside pytest's temporary folder, so tests never touch a user's stores.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("RGOPS_PSEUDONYM_KEY", "test-key-0123456789abcdef-not-secret")

# --- cohort fixtures (synthetic cohort) ------------------------------------------------------------

# --- datasets fixtures (ingest) --------------------------------------------------------------------
