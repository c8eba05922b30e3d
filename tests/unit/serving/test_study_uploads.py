"""Whole studies and DICOM media through the extraction path of rgops.serving (no server)."""

from __future__ import annotations

import numpy as np
import pytest

from rgops import serving
from rgops.data.patch import PatchSpec
from rgops.serving.config import UploadLimits
from rgops.errors import StudyError
from tests.study_factory import media_folder, multi_series_study, to_bytes, zip_folder


def _patches(datasets):
    return serving.patch_from_dicom(datasets, PatchSpec())


def test_a_multi_series_study_cuts_the_same_patches_as_its_ct_and_seg(tiny_cohort) -> None:
    study = multi_series_study(tiny_cohort)
    plain = [d for d in study if "LOCALIZER" not in d.get("ImageType", [])]
    expected, _ = _patches(plain)
    got, provenance = _patches(multi_series_study(tiny_cohort))
    np.testing.assert_array_equal(got, expected)
    assert any("localizer" in s and "ignored" in s for s in provenance["study"])
    assert sum(s.endswith("-> ct") for s in provenance["study"]) == 1


def test_a_media_zip_with_a_dicomdir_is_read_as_its_study(tiny_cohort, tmp_path) -> None:
    study = multi_series_study(tiny_cohort)
    data = zip_folder(media_folder(study, tmp_path / "cd"))
    datasets = serving.read_dicom_upload([("media.zip", data)], UploadLimits())
    assert len(datasets) == len(study)  # neither the DICOMDIR nor README.TXT
    got, _ = _patches(datasets)
    expected, _ = _patches(multi_series_study(tiny_cohort))
    np.testing.assert_array_equal(got, expected)


def test_a_dicomdir_uploaded_as_a_file_is_skipped_not_called_truncated(tiny_cohort, tmp_path) -> None:
    study = multi_series_study(tiny_cohort)
    folder = media_folder(study, tmp_path / "cd")
    files = [("DICOMDIR", (folder / "DICOMDIR").read_bytes())] + [(f"{i}.dcm", to_bytes(d)) for i, d in enumerate(study)]
    assert len(serving.read_dicom_upload(files, UploadLimits())) == len(study)


def test_a_study_without_a_seg_is_refused_with_the_series_found(tiny_cohort) -> None:
    study = [d for d in multi_series_study(tiny_cohort) if d.Modality != "SEG"]
    with pytest.raises(StudyError) as err:
        _patches(study)
    assert "no DICOM SEG" in str(err.value) and "LOCALIZER" in str(err.value)
    assert "R01-" not in str(err.value)  # series are named by position, never by patient


def test_an_sr_in_the_study_is_skipped_not_called_truncated(tiny_cohort) -> None:
    from rgops.dicom_sr import ModelRef, measurement_report

    study = multi_series_study(tiny_cohort)
    seg = next(d for d in study if d.Modality == "SEG")
    sr = measurement_report([study[2]], seg, [1.0], None, ModelRef("rgops-cae", "1", "champion"))
    files = [(f"{i}.dcm", to_bytes(d)) for i, d in enumerate([*study, sr])]
    assert len(serving.read_dicom_upload(files, UploadLimits())) == len(study)


def test_program_scores_of_a_synthetic_trained_model_carry_a_warning() -> None:
    import dataclasses

    import torch

    from rgops.data.datasets import GenePanel
    from rgops.models.cae import CAEConfig, ConditionalAE
    from rgops.models.program_head import ProgramHead

    torch.manual_seed(0)
    cfg = CAEConfig(image_size=16, n_genes=2, latent_dim=4, gene_embed_dim=4, gene_hidden=8, widths=(8, 8), groups=2)
    head = ProgramHead.from_json({"names": ["emt"], "coef": [[1.0, 0.0, 0.0, 0.0]], "intercept": [0.0]})
    base = serving.ServedModel("rgops-cae", "1", "champion", "cae", ConditionalAE(cfg).eval(),
                               GenePanel(("A", "B"), np.zeros(2), np.ones(2), n_train=2), program_head=head,
                               card={"trained_on": {"origin": "synthetic", "generator": "rgops.data.synth/1"}})
    patches = np.zeros((1, 1, 16, 16))
    scale = np.zeros(1)
    row = serving.encode(base, patches, scale=scale).mean(head).row(0)
    assert row["program_scores"] is not None and "synthetic cohort (rgops.data.synth/1)" in row["program_scores_warning"]
    assert base.describe()["trained_on"]["origin"] == "synthetic"
    site = dataclasses.replace(base, card={"trained_on": {"origin": "site"}})
    assert serving.encode(site, patches, scale=scale).row(0)["program_scores_warning"] is None
