"""The ``serve:`` section of ``params.yaml`` as a typed, frozen dataclass."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from rgops.config import from_dict
from rgops.errors import ConfigError


@dataclass(frozen=True)
class ServeConfig:
    """The ``serve:`` section of ``params.yaml``.

    Attributes:
        host: interface ``rgops serve`` binds to (localhost by default; put a proxy in front).
        port: HTTP port.
        alias: registry alias the services load (never "latest").
        max_request_mb: request bodies above this are refused with 413.
        max_files: most DICOM files one extraction request may carry (after unzipping).
        max_samples: most images one generation request may ask for.
        max_batch_size: adaptive batching: most patches the server encodes in one model call.
        max_latency_ms: adaptive batching: BentoML's latency budget per request; requests it
            predicts would exceed it are shed with 503, so on a CPU keep it well above one batch's time.
        device: where the models run: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        threads: requests the server runs at once (BentoML ``threads``; model calls release the GIL).
        reload_poll_s: seconds between checks whether the alias moved (0: only the admin route).
        traversal_steps: images in a gene-traversal strip.
        traversal_span: the strip shifts the chosen genes from -span to +span (z-score units).
    """

    host: str = "127.0.0.1"
    port: int = 3000
    alias: str = "champion"
    max_request_mb: float = 64.0
    max_files: int = 2000
    max_samples: int = 16
    max_batch_size: int = 32
    max_latency_ms: int = 10000
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = 4
    reload_poll_s: float = 30.0
    traversal_steps: int = 7
    traversal_span: float = 2.0

    def __post_init__(self) -> None:
        for name in ("max_files", "max_samples", "max_batch_size", "traversal_steps", "threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"serve.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.max_request_mb <= 4096:
            raise ConfigError(f"serve.max_request_mb must be in (0, 4096], got {self.max_request_mb}")
        if self.max_latency_ms < 1 or self.reload_poll_s < 0 or self.traversal_span <= 0:
            raise ConfigError("serve.max_latency_ms must be >= 1, reload_poll_s >= 0, traversal_span > 0")
        if not 0 < self.port < 65536:
            raise ConfigError(f"serve.port must be a TCP port (1-65535), got {self.port}")

    def torch_device(self) -> str:
        """The device models are loaded on (``auto`` resolved).

        Raises:
            ConfigError: ``cuda`` asked for on a machine without CUDA.
        """
        import torch

        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("serve.device is 'cuda' but torch sees no CUDA device; use 'auto' or 'cpu'")
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * 1024 * 1024)

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> "ServeConfig":
        """Read ``params['serve']``; defaults when the section (or the whole file) is absent."""
        data = (params or {}).get("serve") or {}
        return from_dict(cls, dict(data), "serve")
