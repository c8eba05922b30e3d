"""The probe protocol on constructed data with a known answer (rgops.evaluation.probe / protocol)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rgops.errors import EvaluationError, ShapeError
from rgops.evaluation.probe import bootstrap, fit_probe, r2_scores
from rgops.evaluation.protocol import PatientSplit, ProbeConfig, check_cohort, per_patient, probe_metrics

N_TR, N_HO = 300, 300


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    y_tr, y_ho = rng.standard_normal((N_TR, 2)), rng.standard_normal((N_HO, 2))
    # linked: two noisy copies of target 0 plus nuisance columns; independent: pure noise
    lin = lambda y: np.column_stack([y[:, 0] + 0.05 * rng.standard_normal(len(y)),  # noqa: E731
                                     y[:, 0] + 0.05 * rng.standard_normal(len(y)),
                                     rng.standard_normal((len(y), 6))])
    ind = lambda y: rng.standard_normal((len(y), 8))  # noqa: E731
    # memorised: an encoder that learnt its training patients' targets by heart (their features carry
    # them exactly) and knows nothing about a new patient (its features are noise of the same scale)
    mem_tr = np.column_stack([y_tr, rng.standard_normal((N_TR, 4))])
    mem_ho = rng.standard_normal((N_HO, 6))
    return y_tr, y_ho, {"linked": (lin(y_tr), lin(y_ho)), "independent": (ind(y_tr), ind(y_ho)),
                        "memorised": (mem_tr, mem_ho)}


def test_linked_feature_scores_near_one_independent_near_zero(data):
    y_tr, y_ho, sets = data
    r2 = {n: r2_scores(y_ho, fit_probe(tr, y_tr, ho).pred) for n, (tr, ho) in sets.items()}
    assert r2["linked"][0] > 0.95           # the target the features carry
    assert abs(r2["linked"][1]) < 0.05      # the one they do not
    assert np.all(np.abs(r2["independent"]) < 0.05)


def test_memorised_features_do_not_leak_into_the_held_out_score(data):
    y_tr, y_ho, sets = data
    tr, ho = sets["memorised"]
    fit = fit_probe(tr, y_tr, ho)
    in_sample = r2_scores(y_tr, fit_probe(tr, y_tr, tr).pred)
    held = r2_scores(y_ho, fit.pred)
    assert np.all(in_sample > 0.95)         # the probe fits its own training rows perfectly
    assert np.all(held < 0.02)              # and nothing of that carries over to new patients


def test_held_out_rows_never_reach_the_fit(data):
    """Changing the held-out features' scale or mean changes nothing about the fitted probe's
    training-side choices (penalty), only its predictions of those rows."""
    y_tr, _, sets = data
    tr, ho = sets["linked"]
    a, b = fit_probe(tr, y_tr, ho), fit_probe(tr, y_tr, ho * 100 + 7)
    np.testing.assert_array_equal(a.alpha, b.alpha)


def test_intervals_cover_the_point_and_pairs_are_paired(data):
    y_tr, y_ho, sets = data
    preds = {n: fit_probe(tr, y_tr, ho).pred for n, (tr, ho) in sets.items()}
    boot = bootstrap(y_ho, preds, n_boot=300, targets=["a", "b"], mean_over=["a"],
                     pairs=[("linked", "independent"), ("independent", "memorised")])
    lin = boot.sets["linked"].mean
    assert lin.lo <= lin.point <= lin.hi and lin.lo > 0.9
    d = boot.diffs[("linked", "independent")]
    assert d.lo > 0.8                        # clearly better: the interval excludes 0
    d0 = boot.diffs[("independent", "memorised")]
    assert d0.lo > 0                         # memorised features predict worse than no information


def test_probe_metrics_names_and_primary(data):
    y_tr, y_ho, sets = data
    m, _ = probe_metrics({n: tr for n, (tr, _) in sets.items()}, {n: ho for n, (_, ho) in sets.items()},
                         y_tr, y_ho, ["a", "b"], ["a"], [("linked", "independent")], ProbeConfig(n_boot=200))
    assert m["linked.probe_r2.primary"] == pytest.approx(m["linked.probe_r2.a"])
    assert {"linked.probe_r2.b.lo", "independent.probe_r2.primary.hi", "linked.probe_diff.independent.primary.lo",
            "probe.n_train", "probe.n_held_out"} <= set(m)
    assert m["probe.n_held_out"] == N_HO


def test_too_few_patients_and_bad_shapes_are_refused():
    rng = np.random.default_rng(1)
    with pytest.raises(EvaluationError, match="at least 20"):
        fit_probe(rng.standard_normal((10, 3)), rng.standard_normal((10, 1)), rng.standard_normal((20, 3)))
    with pytest.raises(ShapeError, match="do not fit"):
        fit_probe(rng.standard_normal((30, 3)), rng.standard_normal((29, 1)), rng.standard_normal((20, 3)))
    manifest = pd.DataFrame({"pseudo_id": [f"P{i}" for i in range(30)],
                             "split": ["train"] * 25 + ["val"] * 5})
    with pytest.raises(EvaluationError, match="25 training and 5 held-out.*at least 20 training and 10"):
        check_cohort(manifest, ["val", "test"], 20, 10)


def test_per_patient_means_slices_in_the_given_order():
    ids = np.array(["b", "a", "b", "a", "c"])
    x = np.array([[1.0], [10.0], [3.0], [20.0], [5.0]])
    np.testing.assert_allclose(per_patient(ids, x, ["a", "b"]), [[15.0], [2.0]])
    split = PatientSplit.of(pd.DataFrame({"pseudo_id": ids, "split": ["train", "val", "train", "val", "test"]}),
                            ["val", "test"])
    assert split.train == ["b"] and split.held_out == ["a", "c"]
