"""Image generation: a raw gene-expression profile (a mapping gene -> value, or a TSV column in the
format of the cohort's ``genes.tsv``) -> normalised with the model's gene panel -> the GAN's
generator -> patches, rendered by :mod:`rgops.export` as PNG or DICOM Secondary Capture."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from rgops.data.datasets import GenePanel
from rgops.errors import GeneMismatchError, GeneTableError, ShapeError

if TYPE_CHECKING:
    from rgops.serving.slots import ServedModel

def profile_from_tsv(text: str, sample: str | None = None) -> pd.Series:
    """One profile from TSV text in the cohort's ``genes.tsv`` format.

    The first column is ``gene_symbol``; then one column per sample. With several sample columns
    ``sample`` picks one; empty cells are missing values.

    Raises:
        GeneTableError: not that format, duplicate genes, or the sample column is absent/ambiguous.
    """
    try:
        table = pd.read_csv(io.StringIO(text), sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise GeneTableError(f"profile TSV cannot be parsed ({exc}); send tab-separated text with a "
                             "'gene_symbol' column and one column per sample") from None
    if table.shape[1] < 2 or table.columns[0] != "gene_symbol":
        raise GeneTableError(f"profile TSV columns are {list(table.columns)[:5]}; expected 'gene_symbol' "
                             "first, then one column per sample, as in genes.tsv")
    samples = list(table.columns[1:])
    if sample is None:
        if len(samples) != 1:
            raise GeneTableError(f"profile TSV has {len(samples)} sample columns; name the one to use "
                                 "(field 'sample') or send a single column")
        sample = samples[0]
    if sample not in samples:
        raise GeneTableError(f"profile TSV has no sample column {sample!r}; it has {len(samples)} "
                             "sample column(s)")
    genes = table["gene_symbol"].str.strip()
    if (genes == "").any() or genes.duplicated().any():
        raise GeneTableError("profile TSV has empty or duplicated gene symbols; send one row per gene")
    values = pd.to_numeric(table[sample].replace("", np.nan), errors="coerce")
    bad = table[sample][values.isna() & (table[sample].str.strip() != "")]
    if len(bad):
        raise GeneTableError(f"profile TSV holds {len(bad)} non-numeric value(s) (genes "
                             f"{', '.join(genes[bad.index][:5])}); send numbers or empty cells")
    return pd.Series(values.to_numpy(dtype=np.float64), index=genes.to_numpy(), dtype=np.float64)


@dataclass(frozen=True)
class NormalisedProfile:
    """A profile in panel order, and what was done to get there."""

    genes: np.ndarray  # (1, G) float32, z-scored
    imputed: tuple[str, ...]  # panel genes filled with the training mean
    ignored: int  # genes in the request that the panel does not use


def normalise_profile(panel: GenePanel, profile: Mapping[str, Any] | pd.Series, impute: bool) -> NormalisedProfile:
    """Raw profile -> :class:`NormalisedProfile` with the model's panel.

    Raises:
        GeneMismatchError: panel genes are missing and ``impute`` is false (names them).
        GeneTableError: a value is not a number, negative, infinite, or NaN without ``impute``.
    """
    series = profile if isinstance(profile, pd.Series) else pd.Series(dict(profile), dtype="object")
    if len(series) == 0:
        raise GeneMismatchError(f"the profile is empty; send values for the model's {len(panel)} genes "
                                "(GET /metadata lists them)")
    genes = panel.normalise(series, impute=impute)
    present = set(map(str, series.index))
    values = pd.to_numeric(series.reindex(list(panel.genes)), errors="coerce")
    # normalise() accepted every value, so a NaN here is a gene absent or sent empty: it was imputed.
    imputed = tuple(g for g, v in zip(panel.genes, values) if pd.isna(v)) if impute else ()
    return NormalisedProfile(genes, imputed, len(present - set(panel.genes)))


def generate(model: ServedModel, genes: np.ndarray, n: int, seed: int, max_samples: int) -> np.ndarray:
    """``n`` patches ``(n, 1, S, S)`` in [-1, 1] for one normalised profile ``(1, G)``.

    Raises:
        ShapeError: ``n`` outside ``[1, max_samples]``.
    """
    import torch

    from rgops.models.gan import sample

    if not 1 <= n <= max_samples:
        raise ShapeError(f"asked for {n} samples; send n_samples between 1 and {max_samples}")
    with torch.inference_mode():
        out = sample(model.module, torch.from_numpy(genes.reshape(1, -1)), n=n, seed=seed)
    return out.cpu().numpy().astype(np.float32)


def traversal(model: ServedModel, genes: np.ndarray, program_genes: Sequence[str], steps: int,
              span: float, seed: int) -> tuple[np.ndarray, list[float]]:
    """A gene-traversal strip: the same noise, the chosen genes shifted from ``-span`` to ``+span``.

    The caller names the genes of the program to traverse (the model knows genes, not programs);
    every other gene keeps the profile's value.

    Returns:
        ``(steps, 1, S, S)`` patches and the z-score offset of each.

    Raises:
        GeneMismatchError: a named gene is not in the model's panel, or none is named.
    """
    import torch

    if not program_genes:
        raise GeneMismatchError("traversal needs the genes of the program to vary (field 'traverse_genes')")
    unknown = [g for g in program_genes if g not in model.panel.genes]
    if unknown:
        raise GeneMismatchError(f"traversal genes {unknown[:10]} are not in the model's gene panel; "
                                "GET /metadata lists the genes")
    idx = [model.panel.genes.index(g) for g in program_genes]
    offsets = np.linspace(-span, span, steps)
    batch = np.repeat(genes.reshape(1, -1), steps, axis=0).astype(np.float32)
    batch[:, idx] += offsets[:, None].astype(np.float32)
    gen = model.module
    rng = torch.Generator(device="cpu").manual_seed(seed)
    z = torch.randn(1, gen.config.z_dim, generator=rng).expand(steps, -1).to(model.device)
    with torch.inference_mode():
        out = gen(z, torch.from_numpy(batch).to(model.device))
    return out.cpu().numpy().astype(np.float32), [float(o) for o in offsets]


def png(patch: np.ndarray) -> bytes:
    """One generated patch as PNG bytes (:func:`rgops.export.to_png`)."""
    from rgops.export import to_png

    return to_png(patch)


def strip(patches: np.ndarray) -> bytes:
    """A traversal strip as one PNG (:func:`rgops.export.strip_png`)."""
    from rgops.export import strip_png

    return strip_png(patches)


def secondary_captures(images: np.ndarray, model: ServedModel, request_id: str) -> list[bytes]:
    """Generated patches as DICOM Secondary Capture objects, one series per request."""
    from pydicom.uid import generate_uid

    from rgops.export import to_secondary_capture

    series, study = generate_uid(), generate_uid()
    return [to_secondary_capture(img, model.name, model.version, instance_number=i + 1, series_uid=series,
                                 study_uid=study, description=f"request {request_id}")
            for i, img in enumerate(images)]
