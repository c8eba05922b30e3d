"""The evaluation report a researcher reads: markdown and HTML with tables and PNG figures.

Figures (matplotlib, Agg backend chosen inside :func:`write_report`, never at import):

- ``figures/cv_r2.png`` -- held-out R^2 per program/PC for every feature set (and the oracle);
- ``figures/map_<set>.png`` -- the radiogenomic map (Spearman rho, ``*`` where BH q < level);
- ``figures/scatter_<set>.png`` -- out-of-fold predicted vs actual per target;
- ``figures/traversal_<program>.png`` and ``figures/traversals.png`` -- GAN traversal strips.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from rgops.evaluation.result import EvaluationResult

log = logging.getLogger(__name__)

Block = tuple[Any, ...]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if not np.isfinite(v):
            return "nan"
        return f"{v:.1e}" if v != 0 and abs(v) < 1e-3 else f"{v:.3f}"
    return str(v)


def _render_md(blocks: list[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        kind = b[0]
        if kind == "h1":
            out.append(f"# {b[1]}\n")
        elif kind == "h2":
            out.append(f"## {b[1]}\n")
        elif kind == "p":
            out.append(f"{b[1]}\n")
        elif kind == "table":
            header, rows = b[1], b[2]
            out.append("| " + " | ".join(header) + " |")
            out.append("|" + "|".join(" --- " for _ in header) + "|")
            out.extend("| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows)
            out.append("")
        elif kind == "img":
            out.append(f"![{b[2]}]({b[1]})\n")
    return "\n".join(out)


def _render_html(blocks: list[Block], title: str) -> str:
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
           "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
           "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}</style></head><body>"]
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2"):
            out.append(f"<{kind}>{html.escape(b[1])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{html.escape(b[1])}</p>")
        elif kind == "table":
            out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in b[1]) + "</tr>")
            out.extend("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in r) + "</tr>" for r in b[2])
            out.append("</table>")
        elif kind == "img":
            out.append(f"<figure><img src='{html.escape(b[1])}' alt='{html.escape(b[2])}'>"
                       f"<figcaption>{html.escape(b[2])}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def _cv_r2_figure(result: "EvaluationResult", path: Path) -> None:
    import matplotlib.pyplot as plt

    names = [n for n in result.details]
    t = result.target_names
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(t)), 3.5))
    width = 0.8 / max(len(names), 1)
    for i, n in enumerate(names):
        ax.bar(np.arange(len(t)) + i * width, result.details[n]["r2"], width, label=n)
    ax.set_xticks(np.arange(len(t)) + 0.4 - width / 2, t, rotation=30, ha="right")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_ylabel("held-out R$^2$")
    ax.legend(fontsize=8)
    _save(fig, path)


def _map_figure(rho: np.ndarray, q: np.ndarray, rows: list[str], cols: list[str], level: float,
                title: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1 + 0.6 * len(cols), 1 + 0.22 * len(rows)))
    im = ax.imshow(rho, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    for i, j in zip(*np.nonzero(q < level)):
        ax.text(j, i, "*", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows, fontsize=6)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="Spearman rho")
    _save(fig, path)


def _scatter_figure(actual: np.ndarray, pred: np.ndarray, names: list[str], r2: np.ndarray, title: str,
                    path: Path) -> None:
    import matplotlib.pyplot as plt

    k = len(names)
    fig, axes = plt.subplots(1, k, figsize=(2.4 * k, 2.5), squeeze=False)
    for j, ax in enumerate(axes[0]):
        ax.scatter(actual[:, j], pred[:, j], s=8)
        lo, hi = float(actual[:, j].min()), float(actual[:, j].max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.7)
        ax.set_title(f"{names[j]}\nR$^2$={r2[j]:.2f}", fontsize=8)
        ax.set_xlabel("actual", fontsize=7)
    axes[0][0].set_ylabel("held-out prediction", fontsize=7)
    fig.suptitle(title, fontsize=9, y=1.08)
    _save(fig, path)


def _strip_figure(strips: dict[str, np.ndarray], values: list[float], path: Path) -> None:
    import matplotlib.pyplot as plt

    from rgops.evaluation.image_metrics import tile

    fig, axes = plt.subplots(len(strips), 1, figsize=(1.3 * len(values), 1.4 * len(strips)), squeeze=False)
    for ax, (name, imgs) in zip(axes[:, 0], strips.items()):
        ax.imshow(tile(imgs), cmap="gray", vmin=-1, vmax=1)
        ax.set_yticks([])
        s = imgs.shape[-1]
        ax.set_xticks([s * (i + 0.5) for i in range(len(values))], [f"{v:+g}" for v in values], fontsize=7)
        ax.set_ylabel(name, rotation=0, ha="right", fontsize=8)
    _save(fig, path)


def _probe_blocks(result: "EvaluationResult") -> list[Block]:
    """The primary table: probe R^2 on held-out patients with 90% bootstrap intervals."""
    m, t = result.metrics, result.target_names
    sets = sorted({k.split(".probe_r2.")[0] for k in m if ".probe_r2.primary" in k and not k.endswith((".lo", ".hi"))},
                  key=lambda n: (n in ("radiomics", "handcrafted", "oracle"), n))
    if not sets:
        return []
    iv = lambda k: f"{m[k]:.3f} [{m[k + '.lo']:.3f}, {m[k + '.hi']:.3f}]"  # noqa: E731
    rows = [[n, iv(f"{n}.probe_r2.primary"), *(f"{m.get(f'{n}.probe_r2.{x}', float('nan')):.3f}" for x in t)]
            for n in sets]
    diffs = [[k.replace(".probe_diff.", " - ").replace(".primary", ""), iv(k)] for k in sorted(m)
             if ".probe_diff." in k and k.endswith(".primary")]
    return [("h2", "Primary: probe on training patients, scored on held-out patients"),
            ("p", "A ridge probe (penalty by inner CV on the training split) fitted on the training patients' "
                  "features (mean over each patient's slices), scored on held-out patients; 90% bootstrap intervals "
                  "over held-out patients. 'primary' averages the imaging-linked programs (gene PCs without ground truth)."),
            ("table", ["feature set", "primary R2 [90% CI]", *t], rows),
            ("table", ["paired difference", "primary R2 [90% CI]"], diffs)]


def _secondary_blocks(result: "EvaluationResult", figs: Path, files: dict[str, Path]) -> list[Block]:
    """The within-held-out CV summary, its per-target table and figure."""
    m, t, i = result.metrics, result.target_names, result.info
    sets = [n for n in result.details if n != "oracle"]
    blocks: list[Block] = [
        ("h2", "Secondary: within-held-out cross-validation"),
        ("p", f"Every feature set cut to {i.get('equal_dim')} dimensions (PCA where wider) and "
              "cross-validated among the held-out patients only: noisy at a few dozen patients, kept "
              "for the CCA, the Spearman map and program recovery.")]
    has_truth = any(f"{n}.program_recall" in m for n in sets)
    header = ["feature set", "CV R2 mean", "CCA1 held-out", "significant pairs"]
    if has_truth:
        header += ["program recall", "program precision", "R2 linked / oracle", "enriched pairs"]
    rows = []
    for n in sets:
        r = [n, m.get(f"{n}.cv_r2.mean", float("nan")), m.get(f"{n}.cca1", float("nan")),
             int(m.get(f"{n}.sig_pairs", 0))]
        if has_truth:
            r += [m.get(f"{n}.program_recall", float("nan")), m.get(f"{n}.program_precision", float("nan")),
                  m.get(f"{n}.cv_r2.linked_vs_oracle", float("nan")), int(m.get(f"{n}.enriched_pairs", 0))]
        rows.append(r)
    blocks.append(("table", header, rows))
    blocks.append(("h2", "Secondary: within-held-out CV R2 per target"))
    per = [[n, *(float(v) for v in result.details[n]["r2"])] for n in result.details]
    blocks.append(("table", ["feature set", *t], per))
    files["fig_cv_r2"] = figs / "cv_r2.png"
    _cv_r2_figure(result, files["fig_cv_r2"])
    blocks.append(("img", "figures/cv_r2.png", "Held-out R2 per target"))
    if has_truth:
        blocks.append(("h2", "Ground-truth program recovery"))
        rec = [result.details[n].get("recovery", {}) for n in sets]
        blocks.append(("table", ["feature set", "linked programs found", "missed", "decoys falsely linked"],
                       [[n, *(", ".join(r.get(k, [])) or "-" for k in ("found", "missed", "false_links"))]
                        for n, r in zip(sets, rec)]))
    return blocks


def _map_blocks(result: "EvaluationResult", figs: Path, files: dict[str, Path], fdr_q: float) -> list[Block]:
    """Per feature set: the Spearman map, held-out predictions and the strongest enrichments."""
    t = result.target_names
    blocks: list[Block] = [("h2", "Radiogenomic maps")]
    for n in [n for n in result.details if n != "oracle"]:
        d = result.details[n]
        files[f"fig_map_{n}"], files[f"fig_scatter_{n}"] = figs / f"map_{n}.png", figs / f"scatter_{n}.png"
        _map_figure(d["rho"], d["q"], result.feature_labels.get(n, []), t, fdr_q,
                    f"{n}: Spearman rho, * BH q < {fdr_q}", files[f"fig_map_{n}"])
        _scatter_figure(result.targets, d["pred"], t, d["r2"], f"{n}: held-out predictions", files[f"fig_scatter_{n}"])
        blocks += [("img", f"figures/map_{n}.png", f"{n} radiogenomic map"),
                   ("img", f"figures/scatter_{n}.png", f"{n} held-out predictions")]
        enr = d.get("enrichment")
        if enr is not None and len(enr):
            blocks.append(("p", f"{n}: strongest module enrichments (patients split at the median of a feature, "
                                "genes ranked by moderated t, correlation-adjusted (camera) test per module, BH over all pairs)"))
            blocks.append(("table", ["feature", "module", "mean t", "p", "q"],
                           [[result.feature_labels[n][int(r.feature)], r.module, float(r.mean_t), float(r.p),
                             float(r.q)] for r in enr.head(8).itertuples()]))
    return blocks


def _gan_blocks(result: "EvaluationResult", figs: Path, files: dict[str, Path],
                traversal_values: list[float] | None) -> list[Block]:
    """The GAN's metrics table and its traversal strips."""
    gan = {k: v for k, v in result.metrics.items() if k.startswith("gan.")}
    blocks: list[Block] = []
    if gan:
        blocks.append(("h2", "GAN"))
        blocks.append(("p", f"Frechet distance in {result.info.get('gan_feature_space')} features; the reference is "
                            "real vs real at the same sample size. Consistency: programs predicted from "
                            "generated images by a ridge trained on real images, correlated with the "
                            "conditioning profile (ceiling: the same regressor on real held-out images). "
                            "Diversity: pairwise MS-SSIM among samples of one profile (near 1 = mode collapse)."))
        blocks.append(("table", ["metric", "value"], [[k, float(v)] for k, v in sorted(gan.items())]))
    if result.strips:
        import matplotlib.pyplot as plt

        from rgops.evaluation.image_metrics import tile

        values = traversal_values or list(range(next(iter(result.strips.values())).shape[0]))
        for name, imgs in result.strips.items():
            files[f"fig_traversal_{name}"] = figs / f"traversal_{name}.png"
            plt.imsave(files[f"fig_traversal_{name}"], tile(imgs), cmap="gray", vmin=-1, vmax=1)
        files["fig_traversals"] = figs / "traversals.png"
        _strip_figure(result.strips, list(values), files["fig_traversals"])
        blocks.append(("img", "figures/traversals.png",
                       "Gene traversals: one program from low to high (z units), noise fixed"))
    return blocks


def write_report(result: "EvaluationResult", out_dir: str | Path, fdr_q: float = 0.05,
                 traversal_values: list[float] | None = None) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and ``figures/*.png`` under ``out_dir``: the primary probe
    table first, then the secondary numbers, the maps and the GAN.

    Returns:
        name -> path of each file written.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    out = Path(out_dir)
    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    i = result.info
    blocks: list[Block] = [
        ("h1", "rgops radiogenomic evaluation"),
        ("p", f"{i.get('n_train_patients')} training and {i.get('n_patients')} held-out patients (splits "
              f"{', '.join(i.get('splits', []))}), {i.get('n_patches')} slices; targets: {i.get('targets')}; "
              f"radiomics: {i.get('radiomics_features')} pyradiomics features, {i.get('radiomics_skipped')} "
              f"patches skipped; handcrafted: {i.get('handcrafted_features')} shape + texture features.")]
    blocks += _probe_blocks(result)
    blocks += _secondary_blocks(result, figs, files)
    blocks += _map_blocks(result, figs, files, fdr_q)
    blocks += _gan_blocks(result, figs, files, traversal_values)
    md, htm = out / "report.md", out / "report.html"
    md.write_text(_render_md(blocks))
    htm.write_text(_render_html(blocks, "rgops evaluation"))
    files["report_md"], files["report_html"] = md, htm
    log.info("evaluation report written to %s", htm)
    return files
