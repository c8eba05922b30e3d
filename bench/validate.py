"""Validation throughput: Great Expectations vs. plain pandas checks of the same rules, same run.

Generates a synthetic cohort (rgops.data.synth) and measures:
  * building the tables from the cohort (DICOM headers without pixels, one middle slice per series
    decoded for HU): series/s and instances/s;
  * running the suites with GX (rgops.validation.runner, warm cached context) against a pandas
    interpreter of the same suite JSON (same thresholds, same rules), on the cohort tables and on
    the same tables replicated to --rows rows: rows/s for both and the ratio GX/pandas;
  * that both agree: the number of unexpected rows per expectation must match.
Best of --repeats for each; writes bench/results/validate.json.

    .venv/bin/python bench/validate.py [--patients 12] [--rows 50000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("RGOPS_PSEUDONYM_KEY", "bench-key-0123456789abcdef-not-secret")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "validate.json"


def pandas_unexpected(exp: dict[str, Any], df: pd.DataFrame) -> int | float | list:
    """The same rule in plain pandas: unexpected rows (column-map rules) or the aggregate."""
    kind, kw = exp["type"], exp["kwargs"]
    col = df[kw["column"]]
    if kind == "expect_column_values_to_not_be_null":
        return int(col.isna().sum())
    present = col.dropna()
    if kind == "expect_column_values_to_be_in_set":
        return int((~present.isin(kw["value_set"])).sum())
    if kind == "expect_column_values_to_be_between":
        bad = pd.Series(False, index=present.index)
        if kw.get("min_value") is not None:
            bad |= present < kw["min_value"]
        if kw.get("max_value") is not None:
            bad |= present > kw["max_value"]
        return int(bad.sum())
    if kind == "expect_column_values_to_be_unique":
        return int(present.duplicated(keep=False).sum())
    if kind == "expect_column_mean_to_be_between":
        return float(col.astype(float).mean())
    if kind == "expect_column_distinct_values_to_contain_set":
        return sorted(set(kw["value_set"]) - set(present.unique()))
    raise ValueError(f"no pandas version of {kind}")


def pandas_suites(tables: dict[str, pd.DataFrame], suites: dict[str, Any]) -> dict[tuple[str, str, str], Any]:
    out = {}
    for suite in suites.values():
        df = tables[suite.table]
        for exp in suite.expectations:
            out[(suite.table, exp["kwargs"].get("column"), exp["type"])] = pandas_unexpected(exp, df)
    return out


def scale(df: pd.DataFrame, rows: int) -> pd.DataFrame:
    """``df`` resampled to ``rows`` rows, id columns made unique again (so uniqueness still holds
    and the rules see a clean table of that size, like a larger cohort)."""
    if not len(df) or rows <= len(df):
        return df
    extra = df.iloc[np.random.default_rng(0).integers(0, len(df), rows - len(df))].reset_index(drop=True)
    suffix = pd.Series(np.arange(len(extra))).astype(str).radd("-")
    for col in ("pseudo_id", "gene_symbol", "series_uid"):
        if col in extra.columns:
            extra[col] = extra[col].astype(str) + suffix
    return pd.concat([df, extra], ignore_index=True)


def best(fn, repeats: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=12)
    ap.add_argument("--rows", type=int, default=50_000, help="rows per table in the scaled run")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=128)
    args = ap.parse_args()

    from rgops.config import load_params
    from rgops.data.pseudonym import load_key
    from rgops.data.synth import SynthConfig, generate_cohort
    from rgops.validation.runner import run_suites
    from rgops.validation.suites import COHORT_SUITES, ValidateConfig, load_suites
    from rgops.validation.tables import cohort_tables

    config = ValidateConfig.from_params(load_params(Path(__file__).resolve().parents[1] / "params.yaml"))
    suites = load_suites(COHORT_SUITES, config)
    key = load_key(create=False)
    with tempfile.TemporaryDirectory() as tmp:
        cohort = Path(tmp) / "cohort"
        generate_cohort(cohort, SynthConfig(n_patients=args.patients, seed=5, n_genes=400, genes_per_module=12,
                                            image_size=args.image_size, field_of_view_mm=250.0, min_slices=8,
                                            max_slices=16))
        build_s, tables = best(lambda: cohort_tables(cohort, key), args.repeats)
    n_series, n_instances = len(tables["series"]), len(tables["imaging"]) + len(tables["segmentations"])
    run_suites(tables, suites, config, "cohort")  # warm: GX import, context, suite registration

    def compare(tabs: dict[str, pd.DataFrame]) -> dict[str, Any]:
        gx_s, report = best(lambda: run_suites(tabs, suites, config, "cohort"), args.repeats)
        pd_s, pd_result = best(lambda: pandas_suites(tabs, suites), args.repeats)
        mismatches = []
        for o in report.outcomes:
            theirs = pd_result[(o.table, o.column, o.expectation)]
            mine = o.unexpected_count if o.unexpected_count is not None else o.observed
            if isinstance(theirs, list):
                mine = o.observed["n_missing"] if isinstance(o.observed, dict) else 0
                theirs = len(theirs)
            if isinstance(theirs, float) and mine is not None:
                agree = abs(float(mine) - theirs) < 1e-9
            else:
                agree = mine == theirs
            if not agree:
                mismatches.append({"expectation": o.label, "gx": mine, "pandas": theirs})
        rows = int(sum(len(t) for t in tabs.values()))
        return {"rows": rows, "expectations": len(report.outcomes), "gx_s": round(gx_s, 4),
                "pandas_s": round(pd_s, 4), "gx_rows_per_s": round(rows / gx_s, 1),
                "pandas_rows_per_s": round(rows / pd_s, 1), "gx_over_pandas": round(gx_s / pd_s, 1),
                "mismatches": mismatches}

    cohort_run = compare(tables)
    scaled = {name: scale(df, args.rows) for name, df in tables.items()}
    scaled_run = compare(scaled)
    end_to_end = build_s + cohort_run["gx_s"]
    result = {
        "bench": "validate", "python": platform.python_version(), "machine": platform.machine(),
        "cpus": os.cpu_count(), "repeats": args.repeats, "patients": args.patients, "series": n_series,
        "dicom_instances": n_instances,
        "build_tables_s": round(build_s, 4), "build_series_per_s": round(n_series / build_s, 2),
        "build_instances_per_s": round(n_instances / build_s, 1),
        "end_to_end_series_per_s": round(n_series / end_to_end, 2),
        "cohort_tables": cohort_run, "scaled_tables": {"rows_per_table": args.rows, **scaled_run},
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"tables from {n_series} series / {n_instances} DICOM files: {build_s:.2f}s "
          f"({result['build_series_per_s']} series/s, {result['build_instances_per_s']} files/s)")
    for name, run in (("cohort", cohort_run), (f"scaled x{args.rows}", scaled_run)):
        print(f"{name}: {run['rows']} rows, {run['expectations']} expectations: GX {run['gx_s']:.3f}s "
              f"({run['gx_rows_per_s']:.0f} rows/s) vs pandas {run['pandas_s']:.4f}s "
              f"({run['pandas_rows_per_s']:.0f} rows/s): GX/pandas = {run['gx_over_pandas']}x; "
              f"mismatches {len(run['mismatches'])}")
    print(f"end to end: {result['end_to_end_series_per_s']} series/s; wrote {OUT}")


if __name__ == "__main__":
    main()
