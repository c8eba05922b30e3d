"""Association metrics on constructed data with known answers: perfectly linked, independent and
decoy features."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from rgops.errors import ShapeError
from rgops.evaluation import association as A

N = 120


@pytest.fixture(scope="module")
def linked():
    """Two programs drive two image features exactly; a third (decoy) program drives nothing."""
    rng = np.random.default_rng(0)
    programs = rng.standard_normal((N, 3))
    noise_feats = rng.standard_normal((N, 4))
    x = np.column_stack([programs[:, 0], 2.0 * programs[:, 1] + 1.0, noise_feats])
    return programs, x


def test_ridge_cv_r2_linked_independent_and_decoy(linked):
    programs, x = linked
    r2 = A.ridge_cv_r2(x, programs, seed=1)
    assert r2.shape == (3,)
    assert r2[0] > 0.97 and r2[1] > 0.97  # exact linear links
    assert -0.2 < r2[2] < 0.05  # decoy: no better than the mean on held-out patients


def test_ridge_cv_r2_is_held_out_not_in_sample():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 30))  # many noise features: in-sample R^2 would be large
    y = rng.standard_normal((40, 1))
    assert A.ridge_cv_r2(x, y)[0] < 0.05


def test_ridge_cv_r2_noisy_link_matches_theory():
    rng = np.random.default_rng(2)
    f = rng.standard_normal(400)
    y = f + rng.standard_normal(400)  # population R^2 = 0.5
    r2 = A.ridge_cv_r2(f[:, None], y[:, None])[0]
    assert 0.4 < r2 < 0.6


def test_groups_keep_a_patient_in_one_fold():
    folds = A._folds(12, 3, 0, np.repeat(np.arange(6), 2))
    for tr, te in folds:
        assert not set(np.repeat(np.arange(6), 2)[tr]) & set(np.repeat(np.arange(6), 2)[te])


def test_heldout_cca_linked_vs_independent(linked):
    programs, x = linked
    assert A.heldout_cca(x, programs) > 0.95
    rng = np.random.default_rng(3)
    indep = rng.standard_normal((N, 6))
    held = A.heldout_cca(indep, programs)
    in_sample = A.fit_cca(indep, programs, reg=0.0).train_corr
    assert abs(held) < 0.25
    assert in_sample > held + 0.15  # what an in-sample CCA would have claimed


def test_spearman_map_matches_scipy_and_is_rank_based(linked):
    programs, x = linked
    xm = x.copy()
    xm[:, 0] = np.exp(3 * xm[:, 0])  # monotone transform: Spearman unchanged
    rho, p = A.spearman_map(xm, programs)
    assert rho.shape == (6, 3)
    assert rho[0, 0] == pytest.approx(1.0)
    ref = stats.spearmanr(xm[:, 2], programs[:, 2])
    assert rho[2, 2] == pytest.approx(ref.statistic)
    assert p[2, 2] == pytest.approx(ref.pvalue, rel=1e-6)


def test_spearman_map_constant_column_is_null():
    rho, p = A.spearman_map(np.ones((10, 1)), np.arange(10.0))
    assert rho[0, 0] == 0.0 and p[0, 0] == 1.0


def test_bh_fdr_known_values_and_shape():
    p = np.array([0.01, 0.04, 0.03, 0.5])
    # sorted 0.01, 0.03, 0.04, 0.5 -> 0.04, 0.04*4/3... monotone: [0.04, 0.0533, 0.0533, 0.5]
    q = A.bh_fdr(p)
    np.testing.assert_allclose(q, [0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.5])
    assert A.bh_fdr(p.reshape(2, 2)).shape == (2, 2)
    with pytest.raises(ShapeError, match=r"\[0, 1\]"):
        A.bh_fdr(np.array([0.1, np.nan]))


def test_significant_pairs_only_on_linked(linked):
    programs, x = linked
    _, p = A.spearman_map(x, programs)
    q = A.bh_fdr(p)
    sig = q < 0.05
    assert sig[0, 0] and sig[1, 1]
    assert sig[[0, 1], [0, 1]].all()


def test_bh_controls_false_discoveries_over_replicates():
    # 2 linked pairs among 60: the mean false-discovery proportion stays near or below 5 %,
    # while unadjusted p < 0.05 would call about 3 null pairs per replicate.
    rng = np.random.default_rng(8)
    fdp, raw_false = [], []
    for _ in range(40):
        prog = rng.standard_normal((60, 3))
        x = np.column_stack([prog[:, 0], prog[:, 1] + 0.5 * rng.standard_normal(60),
                             rng.standard_normal((60, 18))])
        _, p = A.spearman_map(x, prog)
        sig = A.bh_fdr(p) < 0.05
        truth = np.zeros_like(sig)
        truth[0, 0] = truth[1, 1] = True
        fdp.append((sig & ~truth).sum() / max(sig.sum(), 1))
        raw_false.append(((p < 0.05) & ~truth).sum())
    assert np.mean(fdp) < 0.08
    assert np.mean(raw_false) > 1.5


def test_moderated_t_finds_shifted_genes_and_shrinks():
    rng = np.random.default_rng(4)
    n, g = 40, 200
    expr = rng.standard_normal((n, g))
    group = np.arange(n) < 20
    expr[group, :10] += 2.0
    t, p, d0 = A.moderated_t(expr, group)
    assert (t[:10] > 3).all()
    assert np.median(np.abs(t[10:])) < 1.0
    assert d0 > 10  # equal true variances: strong shrinkage
    # With no spread of variances beyond sampling, t approaches the pooled-variance t.
    classic = stats.ttest_ind(expr[group], expr[~group]).statistic
    assert np.corrcoef(t, classic)[0, 1] > 0.95


def test_moderated_t_rejects_tiny_group():
    with pytest.raises(ShapeError, match="at least 2"):
        A.moderated_t(np.zeros((5, 3)), np.array([True, False, False, False, False]))


def test_feature_split_enrichment_finds_linked_module_not_decoy():
    rng = np.random.default_rng(5)
    n = 80
    prog = rng.standard_normal((n, 2))
    genes = [f"G{i}" for i in range(60)]
    expr = rng.standard_normal((n, 60))
    expr[:, :10] += 1.5 * prog[:, :1]  # module A driven by program 0
    expr[:, 10:20] += 1.5 * prog[:, 1:2]  # module B (decoy) driven by program 1
    modules = {"A": genes[:10], "B": genes[10:20]}
    feature = prog[:, 0] + 0.1 * rng.standard_normal(n)  # image feature linked to program 0 only
    res = A.feature_split_enrichment(feature, expr, genes, modules)
    assert res["A"]["q"] < 0.01 and res["A"]["mean_t"] > 0
    assert res["B"]["p"] > 0.05


def test_module_scores_and_missing_module():
    expr = np.arange(12.0).reshape(3, 4)
    s = A.module_scores(expr, ["a", "b", "c", "d"], {"m1": ["a", "b"], "m2": ["d", "zz"]})
    np.testing.assert_allclose(s, [[0.5, 3], [4.5, 7], [8.5, 11]])
    with pytest.raises(ShapeError, match="module 'm3'"):
        A.module_scores(expr, ["a", "b", "c", "d"], {"m3": ["x"]})


def test_gene_pcs_recovers_dominant_axis():
    rng = np.random.default_rng(6)
    z = rng.standard_normal(100)
    expr = np.outer(z, np.ones(20)) * 3 + 0.1 * rng.standard_normal((100, 20))
    pcs = A.gene_pcs(expr, 3)
    assert pcs.shape == (100, 3)
    assert abs(np.corrcoef(pcs[:, 0], z)[0, 1]) > 0.99


def test_program_recovery_counts():
    programs = ["p1", "p2", "p3", "d1"]
    q = np.array([[0.01, 0.5, 0.9, 0.02], [0.2, 0.04, 0.9, 0.6]])
    r = A.program_recovery(q, programs, ["p1", "p2", "p3"], ["d1"])
    assert r.found == ("p1", "p2") and r.missed == ("p3",) and r.false_links == ("d1",)
    assert r.recall == pytest.approx(2 / 3)
    assert r.precision == pytest.approx(2 / 3)
    none = A.program_recovery(np.ones((2, 4)), programs, ["p1", "p2", "p3"], ["d1"])
    assert none.recall == 0.0 and none.precision == 0.0
    with pytest.raises(ShapeError, match="not columns"):
        A.program_recovery(q, programs, ["p9"], [])


def test_shape_errors_name_values():
    with pytest.raises(ShapeError, match="50 rows but targets have 40"):
        A.ridge_cv_r2(np.zeros((50, 2)), np.zeros((40, 1)))
    with pytest.raises(ShapeError, match="non-finite"):
        A.spearman_map(np.array([[np.nan]] * 5), np.zeros((5, 1)))


def test_pca_reduce_equal_dimensionality():
    rng = np.random.default_rng(7)
    a = rng.standard_normal((30, 10))
    tr, other = A.pca_reduce(a, 4, a[:5])
    assert tr.shape == (30, 4) and other.shape == (5, 4)
    np.testing.assert_allclose(other, tr[:5])


def test_module_enrichment_allows_for_correlated_module_genes():
    # A decoy module whose genes share a strong common factor, and an image feature independent of
    # it: assuming independent genes calls it enriched far more often than 5 %; camera's VIF does not.
    rng = np.random.default_rng(9)
    genes = [f"G{i}" for i in range(80)]
    modules = {"decoy": genes[:10]}
    naive, camera = 0, 0
    reps = 40
    for _ in range(reps):
        expr = rng.standard_normal((50, 80))
        expr[:, :10] += 2.0 * rng.standard_normal((50, 1))
        high = rng.standard_normal(50) > 0
        t, _, _ = A.moderated_t(expr, high)
        resid = expr.copy()
        resid[high] -= expr[high].mean(axis=0)
        resid[~high] -= expr[~high].mean(axis=0)
        naive += A.module_enrichment(t, genes, modules)["decoy"]["p"] < 0.05
        res = A.module_enrichment(t, genes, modules, resid)["decoy"]
        camera += res["p"] < 0.05
        assert res["vif"] > 3
    assert naive / reps > 0.25
    assert camera / reps < 0.15


def test_fit_ridge_predicts_and_folds_back_to_raw_scale():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((80, 3)) * np.array([5.0, 0.2, 1.0]) + 2.0
    y = np.column_stack([x[:, 0] - 10 * x[:, 1], rng.standard_normal(80)])
    fit = A.fit_ridge(x, y, alphas=(1e-6, 1e3))
    assert fit.alphas[0] == 1e-6 and fit.alphas[1] == 1e3  # inner CV: tiny penalty for signal, big for noise
    np.testing.assert_allclose(fit.predict(x)[:, 0], y[:, 0], atol=1e-3)
    coef, icpt = fit.raw_coefficients()
    np.testing.assert_allclose(x @ coef.T + icpt, fit.predict(x), atol=1e-9)
