"""Promotion gates: pure functions of numbers, no registry and no MLflow.

A challenger is promoted only when every gate passes (:func:`evaluate_gates`):

- ``data_validation`` — the data version it was trained on passed data validation
  (``promote.require_validation``);
- ``floor`` — each metric of ``promote.floors`` for its kind is on the right side of an absolute bound
  (a minimum for higher-is-better metrics, a maximum for lower-is-better ones). The CAE floors read the
  probe protocol: ``cae.probe_r2.primary.lo`` (a held-out interval that includes 0 is refused, the first
  version too) and ``cae.probe_diff.radiomics.primary.hi`` (a CAE whose whole interval lies below
  radiomics is refused); ``gan.cond_consistency`` refuses an untrained generator;
- ``vs_champion`` — not worse than the current champion by more than ``promote.tolerance``, on the same
  held-out split (different data digests: the numbers are not comparable, the gate fails).

Each refusal's detail names the gate, the metric and both numbers. :mod:`rgops.registry` records the
report on the model version; :mod:`rgops.retrain` decides what to do with it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from rgops.config import from_dict, section
from rgops.errors import ConfigError

KINDS = ("cae", "gan")


def model_name(kind: str) -> str:
    """The registered-model name of a model kind: ``cae`` -> ``rgops-cae``."""
    if kind not in KINDS:
        raise ConfigError(f"unknown model kind {kind!r}; expected one of {list(KINDS)}")
    return f"rgops-{kind}"


@dataclass(frozen=True)
class PromoteConfig:
    """The ``promote:`` section of ``params.yaml``.

    Attributes:
        approval: ``auto`` promotes when every gate passes; ``manual`` waits for a person.
        require_validation: refuse a model whose data version did not pass data validation.
        floors: metric name -> absolute floor (a minimum for higher-is-better metrics, a maximum
            for lower-is-better ones). Metric names carry their kind as prefix (``cae.``, ``gan.``).
        tolerance: metric name -> how much worse than the champion (absolute, same held-out split)
            the challenger may be.
        higher_is_better: metrics where larger is better.
        lower_is_better: metrics where smaller is better. Every gated metric must be in one list.
        needs_ground_truth: floors that only a cohort with ground truth can measure (the GAN's
            phenotype consistency): on an evaluation whose ``<kind>.ground_truth`` is 0 (site data)
            such a floor is reported as not measurable and does not refuse; a missing flag or
            metric still refuses.
    """

    approval: Literal["auto", "manual"] = "auto"
    require_validation: bool = True
    floors: dict[str, float] = field(default_factory=dict)
    tolerance: dict[str, float] = field(default_factory=dict)
    higher_is_better: tuple[str, ...] = ()
    lower_is_better: tuple[str, ...] = ()
    needs_ground_truth: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        both = sorted(set(self.higher_is_better) & set(self.lower_is_better))
        if both:
            raise ConfigError(f"promote: metrics {both} are both higher_is_better and lower_is_better")
        known = set(self.higher_is_better) | set(self.lower_is_better)
        for where, table in (("floors", self.floors), ("tolerance", self.tolerance)):
            for metric, value in table.items():
                _check_gated_metric(where, metric, value, known)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "PromoteConfig":
        """Read the ``promote`` section of a params mapping."""
        return from_dict(cls, section(dict(params), "promote"), "promote")

    def higher(self, metric: str) -> bool:
        return metric in self.higher_is_better


def _check_gated_metric(where: str, metric: str, value: Any, known: set[str]) -> None:
    if metric not in known:
        raise ConfigError(f"promote.{where}.{metric}: the metric is in neither higher_is_better nor "
                          "lower_is_better; add it to one of them")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"promote.{where}.{metric}: expected a finite number, got {value!r}")
    if where == "tolerance" and value < 0:
        raise ConfigError(f"promote.tolerance.{metric}: got {value}, expected >= 0")
    if metric.split(".", 1)[0] not in KINDS:
        raise ConfigError(f"promote.{where}.{metric}: metric names start with the model kind "
                          f"({', '.join(k + '.' for k in KINDS)})")


@dataclass(frozen=True)
class GateResult:
    """One gate: its name, the metric, the challenger's and the reference number, the verdict."""

    gate: str
    metric: str
    challenger: float | None
    reference: float | None
    passed: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class GateReport:
    """Every gate evaluated for one challenger of one kind."""

    kind: str
    results: tuple[GateResult, ...]
    champion_version: str | None = None

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failed(self) -> tuple[GateResult, ...]:
        return tuple(r for r in self.results if not r.passed)

    def summary(self) -> str:
        """One line per failed gate (or ``all N gates passed``)."""
        if self.passed:
            return f"all {len(self.results)} gates passed"
        return "; ".join(r.detail for r in self.failed)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "champion_version": self.champion_version,
                "passed": self.passed, "results": [r.to_json() for r in self.results]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "GateReport":
        return cls(data["kind"], tuple(GateResult(**r) for r in data["results"]), data.get("champion_version"))

    def to_markdown(self) -> str:
        """A table of gates for a Prefect artifact or a report."""
        def fmt(v: float | None) -> str:
            return "—" if v is None else f"{v:.4g}"
        lines = [f"### Promotion gates, {model_name(self.kind)} "
                 f"(champion: {self.champion_version or 'none'}) — {'PASSED' if self.passed else 'REFUSED'}",
                 "", "| gate | metric | challenger | reference | result |", "| --- | --- | --- | --- | --- |"]
        for r in self.results:
            lines.append(f"| {r.gate} | {r.metric} | {fmt(r.challenger)} | {fmt(r.reference)} | "
                         f"{'pass' if r.passed else 'FAIL'} |")
        return "\n".join(lines)


def _finite(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def validation_gate(validation: str | None, validated_digest: str | None, data_digest: str | None) -> GateResult:
    """``data_validation``: validation passed, and on the very data the model was trained on."""
    ok = validation == "passed" and data_digest is not None and validated_digest == data_digest
    if validation != "passed":
        detail = (f"gate data_validation: data validation is {validation or 'not recorded'!s} for "
                  f"data {str(data_digest)[:12]}, expected 'passed'; run `rgops validate` on it first")
    elif validated_digest != data_digest:
        detail = (f"gate data_validation: validation ran on data {str(validated_digest)[:12]} but the "
                  f"model was trained on {str(data_digest)[:12]}; validate the data it was trained on")
    else:
        detail = f"data validation passed for data {str(data_digest)[:12]}"
    return GateResult("data_validation", "rgops.validation", None, None, ok, detail)


def floor_gate(metric: str, value: Any, floor: float, higher: bool) -> GateResult:
    """``floor[metric]``: the challenger's number against an absolute bound."""
    got = _finite(value)
    if got is None:
        return GateResult("floor", metric, None, float(floor), False,
                          f"gate floor[{metric}]: challenger has no finite value (got {value!r}), "
                          f"floor is {floor:.4g}")
    ok = got >= floor if higher else got <= floor
    rel = ">=" if higher else "<="
    return GateResult("floor", metric, got, float(floor), ok,
                      f"gate floor[{metric}]: challenger {got:.4g}, required {rel} {floor:.4g}")


def unmeasurable_gate(metric: str, floor: float) -> GateResult:
    """``floor[metric]`` on a cohort without ground truth: reported, not refusing (see PromoteConfig)."""
    return GateResult("floor", metric, None, float(floor), True,
                      f"gate floor[{metric}]: not measurable on this cohort (no ground truth); floor "
                      f"{floor:.4g} not applied, the other gates decide")


def champion_gate(metric: str, value: Any, reference: Any, tol: float, higher: bool, *,
                  champion_version: str | None, comparable: bool, data_digests: tuple[str | None, str | None]
                  ) -> GateResult:
    """``vs_champion[metric]``: not worse than the champion by more than ``tol`` on the same data.

    ``data_digests`` is ``(challenger's, champion's)``, named in the refusal when not ``comparable``.
    """
    if reference is None:
        return GateResult("vs_champion", metric, value, None, True,
                          f"champion {champion_version} has no {metric}; not compared")
    ref = float(reference)
    if not comparable:
        return GateResult("vs_champion", metric, value, ref, False,
                          f"gate vs_champion[{metric}]: champion {champion_version} was measured on data "
                          f"{str(data_digests[1])[:12]}, challenger on {str(data_digests[0])[:12]}; "
                          "re-evaluate the champion on the same held-out split")
    got = _finite(value)
    if got is None:
        return GateResult("vs_champion", metric, None, ref, False,
                          f"gate vs_champion[{metric}]: challenger has no finite value "
                          f"(got {value!r}), champion {champion_version} has {ref:.4g}")
    bound, rel = (ref - tol, ">=") if higher else (ref + tol, "<=")
    ok = got >= bound if higher else got <= bound
    return GateResult("vs_champion", metric, got, ref, ok,
                      f"gate vs_champion[{metric}]: challenger {got:.4g}, champion {champion_version} "
                      f"{ref:.4g}, required {rel} {bound:.4g} (tolerance {tol:.4g})")


def evaluate_gates(
    kind: str,
    challenger: Mapping[str, float],
    config: PromoteConfig,
    *,
    champion: Mapping[str, float] | None = None,
    champion_version: str | None = None,
    validation: str | None = None,
    validated_digest: str | None = None,
    data_digest: str | None = None,
    champion_data_digest: str | None = None,
) -> GateReport:
    """Evaluate the promotion gates of one challenger.

    Args:
        kind: ``cae`` or ``gan``; only metrics named ``<kind>.*`` are gated.
        challenger: the challenger's held-out metrics.
        config: floors, tolerances and directions.
        champion: the current champion's metrics on the same held-out split, or None when there
            is no champion yet (then only floors and validation apply).
        champion_version: the champion's version number, recorded in the report.
        validation: the validation outcome recorded for the training data (``passed``/``failed``).
        validated_digest: the data digest that validation ran on.
        data_digest: the data digest the challenger was trained and evaluated on.
        champion_data_digest: the data digest the champion metrics were measured on; when it
            differs from ``data_digest`` the comparison gates fail (the numbers are not comparable).
    """
    own = {m: v for m, v in config.floors.items() if m.startswith(f"{kind}.")}
    results = [validation_gate(validation, validated_digest, data_digest)] if config.require_validation else []
    no_truth = challenger.get(f"{kind}.ground_truth") == 0.0
    results += [unmeasurable_gate(m, floor) if no_truth and m in config.needs_ground_truth
                else floor_gate(m, challenger.get(m), floor, config.higher(m)) for m, floor in sorted(own.items())]
    if champion is not None:
        comparable = champion_data_digest is None or data_digest is None or champion_data_digest == data_digest
        results += [champion_gate(m, challenger.get(m), champion.get(m), tol, config.higher(m),
                                  champion_version=champion_version, comparable=comparable,
                                  data_digests=(data_digest, champion_data_digest))
                    for m, tol in sorted(config.tolerance.items()) if m.startswith(f"{kind}.")]
    return GateReport(kind, tuple(results), champion_version)
