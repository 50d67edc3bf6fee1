"""``choose_sampling``: guidance and steps chosen by TSTR on the real validation split, the test split never read.

A tiny oct_ddpm (one epoch on real OCT2017 B-scans, ``tests/_generators.py``) and the tiny classifier settings: the
numbers are noise, the behaviour is what is checked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _datalists import small_oct2017_datalist
from _generators import tiny_generator_bundle

from medicraft_monai.data.keys import OCTKeys
from medicraft_monai.evaluation import ClassifierSettings, utility
from medicraft_monai.evaluation.sampling_choice import choose_sampling


@pytest.fixture(scope="module")
def datalist(oct2017_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 training, 1 validation and 1 test B-scan per class (patient-level splits of the real sample)."""
    return small_oct2017_datalist(oct2017_dir, tmp_path_factory.mktemp("data") / "datalist.json", 2, 1, 1)


def test_scores_every_setting_on_validation_and_never_reads_test(datalist: Path, tmp_path: Path, monkeypatch) -> None:
    bundle = tiny_generator_bundle(tmp_path / "tiny_oct_ddpm", datalist)
    data = json.loads(datalist.read_text())
    test_images = {Path(it[OCTKeys.IMAGE]).name for it in data["test"]}
    validation_images = {Path(it[OCTKeys.IMAGE]).name for it in data["validation"]}
    scored: list[set[str]] = []
    real_evaluate = utility.evaluate_classifier

    def spy(ckpt, items, *args, **kwargs):
        scored.append({Path(it[OCTKeys.IMAGE]).name for it in items})
        return real_evaluate(ckpt, items, *args, **kwargs)

    monkeypatch.setattr("medicraft_monai.evaluation.sampling_choice.evaluate_classifier", spy)
    settings = ClassifierSettings.tiny(image_size=(32, 64))
    result = choose_sampling(
        datalist, bundle, tmp_path / "choice", guidance_scales=(1.0, 3.0), steps=(2,), seeds=(0,), classifier=settings
    )
    assert [(r["guidance_scale"], r["steps"]) for r in result["settings"]] == [(1.0, 2), (3.0, 2)]
    assert result["split"] == "validation" and result["per_class"] == 2  # 8 training images, 4 classes
    assert all(r["synthetic"] == 8 for r in result["settings"])
    best = max(r["tstr"]["mean"] for r in result["settings"])
    chosen = next(r for r in result["settings"] if r["tstr"]["mean"] == best)
    assert result["chosen"] == {"guidance_scale": chosen["guidance_scale"], "steps": chosen["steps"]}
    # TRTR once, then one TSTR per setting: every score on the validation images, none on a test image
    assert len(scored) == 1 + 2
    assert all(names == validation_images for names in scored)
    assert not any(names & test_images for names in scored)
    assert json.loads((tmp_path / "choice" / "sampling_choice.json").read_text())["chosen"] == result["chosen"]
