"""The bundle registry (``medicraft zoo list`` / ``info``, ``medicraft_monai.zoo.find``) on the shipped bundles, an
exported bundle folder and packed release archives.

Every shipped bundle is listed with what its own metadata and configs say; the classifier, the one whose metadata
reports numbers, is ranked, the others are listed as unmeasured. Two versions of a tiny trained generator (one
folder, one packed archive) get Frechet distances written into their metadata, and are ranked smallest first.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import test_oct_ddpm as ddpm
from _generators import CLASSES, IMAGE_SIZE, tiny_generator_bundle

import medicraft_monai.zoo
from medicraft_monai import registry
from medicraft_monai.bundles import bundles_root, list_bundles
from medicraft_monai.cli import main
from medicraft_monai.networks.release import pack_bundle
from medicraft_monai.registry import find, higher_is_better, info, scan

datalist = ddpm.datalist  # the fixture: 2 training and 1 validation real B-scan per OCT2017 class


@pytest.fixture
def medicraft(capsys) -> Callable[..., subprocess.CompletedProcess]:
    """Run the ``medicraft`` command's entry point in this process (the zoo commands load no model): its exit
    status, standard output and error."""

    def run(*args: str) -> subprocess.CompletedProcess:
        capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as stop:
            code = int(stop.code or 0)
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run


def _metadata(folder: Path) -> dict:
    return json.loads((folder / "configs" / "metadata.json").read_text())


def _set_metrics(folder: Path, metrics: dict) -> None:
    meta = _metadata(folder)
    meta["eval_metrics"] = metrics
    (folder / "configs" / "metadata.json").write_text(json.dumps(meta, indent=4))


@pytest.fixture(scope="module")
def releases(datalist: Path, tmp_path_factory) -> Path:
    """A folder with a tiny generator (1.0.0, FD 40.5) as a bundle folder and a packed archive of its 1.1.0 (FD 12.25),
    an unmeasured copy, and a zip that is no bundle (skipped when a folder is scanned)."""
    work = tmp_path_factory.mktemp("zoo")
    shelf = work / "shelf"
    folder = tiny_generator_bundle(shelf / "tiny_oct_ddpm", datalist, version="1.0.0")
    shutil.rmtree(shelf / "tiny_oct_ddpm_training")
    _set_metrics(folder, {"frechet_distance": 40.5, "tstr": {"balanced_accuracy": 0.61}, "test_images": 40})
    newer = Path(shutil.copytree(folder, work / "build" / "tiny_oct_ddpm"))
    meta = _metadata(newer)
    meta["version"] = "1.1.0"
    meta["changelog"]["1.1.0"] = "trained longer"
    (newer / "configs" / "metadata.json").write_text(json.dumps(meta, indent=4))
    _set_metrics(newer, {"frechet_distance": 12.25, "tstr": {"balanced_accuracy": 0.72}})
    pack_bundle(newer, shelf)
    unmeasured = Path(shutil.copytree(folder, shelf / "tiny_unmeasured"))
    _set_metrics(unmeasured, {})
    (shelf / "notes.zip").write_bytes(b"not a bundle")
    return shelf


def test_every_shipped_bundle_is_listed_as_its_metadata_and_configs_say() -> None:
    entries = {e.name: e for e in scan()}
    assert sorted(entries) == list_bundles()
    for name, entry in entries.items():
        meta = _metadata(bundles_root() / name)
        assert entry.version == meta["version"] and entry.source == "shipped" and entry.title == meta["name"]
        assert entry.eval_metrics == meta["eval_metrics"] and entry.measured == bool(meta["eval_metrics"])
    tasks = {name: e.task for name, e in entries.items()}
    assert tasks == {
        "oct_classifier": "classification",
        "oct_context_restoration": "restoration",
        "oct_ddpm": "generation",
        "oct_ldm": "generation",
        "oct_synthesis_eval": "evaluation",
    }
    classifier = entries["oct_classifier"]
    assert classifier.classes == ("CNV", "DME", "DRUSEN", "NORMAL") and classifier.image_size == (128, 256)
    assert classifier.metric("balanced_accuracy") == 0.9427
    common = json.loads((bundles_root() / "oct_ddpm" / "configs" / "common.json").read_text())
    assert entries["oct_ddpm"].classes == tuple(common["class_names"])
    assert entries["oct_ddpm"].image_size == tuple(common["image_size"])
    assert medicraft_monai.zoo.find is registry.find, "medicraft_monai.zoo.find is the registry's"


def test_unmeasured_bundles_are_listed_but_never_ranked(medicraft) -> None:
    ranked = find(sort_by="balanced_accuracy")
    assert ranked[0].name == "oct_classifier" and len(ranked) == len(list_bundles())
    assert [e.name for e in ranked[1:]] == sorted(n for n in list_bundles() if n != "oct_classifier")
    out = medicraft("zoo", "list", "--sort-by", "balanced_accuracy")
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line.split() for line in out.stdout.splitlines()[2:]}
    assert rows["oct_classifier"][5:7] == ["1", "0.9427"]
    for name in (n for n in list_bundles() if n != "oct_classifier"):  # no rank; no numbers at all: unmeasured
        assert rows[name][5:7] == ["-", "-" if _metadata(bundles_root() / name)["eval_metrics"] else "unmeasured"]


def test_the_shipped_generators_rank_by_their_measured_frechet_distance(medicraft) -> None:
    """Both generators ship weights measured by the evaluation: ranked by their Frechet distance, smallest first."""
    measured = {e.name: e for e in scan() if e.task == "generation" and e.metric("frechet_distance") is not None}
    ranked = find(task="generation", sort_by="frechet_distance")
    assert [e.name for e in ranked[: len(measured)]] == sorted(
        measured, key=lambda n: measured[n].metric("frechet_distance")
    )
    assert {"oct_ldm", "oct_ddpm"} <= set(measured)
    assert (
        ranked[0].metric("frechet_distance")
        == _metadata(bundles_root() / ranked[0].name)["eval_metrics"]["frechet_distance"]
    )
    row = next(
        line
        for line in medicraft("zoo", "list", "--task", "generation").stdout.splitlines()
        if line.startswith("oct_ldm")
    )
    assert "TSTR_over_TRTR" in row and "frechet_distance" in row, "the headline numbers, not the settings, are shown"


def test_folders_and_packed_archives_are_ranked_by_a_metric_smallest_distance_first(releases: Path) -> None:
    found = find(task="generation", sort_by="frechet_distance", paths=[releases], shipped=False)
    assert [(e.name, e.version, e.source) for e in found] == [
        ("tiny_oct_ddpm", "1.1.0", "archive"),
        ("tiny_oct_ddpm", "1.0.0", "folder"),
        ("tiny_unmeasured", "1.0.0", "folder"),
    ]
    archive = found[0]
    assert archive.location == releases / "tiny_oct_ddpm_v1.1.0.zip" and archive.classes == tuple(CLASSES)
    assert archive.image_size == tuple(IMAGE_SIZE) and archive.metric("tstr/balanced_accuracy") == 0.72
    # higher is better for an accuracy; --descending overrides the rule
    by_tstr = find(sort_by="tstr/balanced_accuracy", paths=[releases], shipped=False)
    assert [e.version for e in by_tstr[:2]] == ["1.1.0", "1.0.0"]
    reversed_ = find(sort_by="frechet_distance", paths=[releases], shipped=False, descending=True)
    assert [e.version for e in reversed_[:2]] == ["1.0.0", "1.1.0"]
    # filters: task words, classes (all of them, any case)
    assert {e.name for e in find(task="classification", paths=[releases])} == {"oct_classifier"}
    assert {e.name for e in find(classes="dme,NORMAL", paths=[releases])} >= {"tiny_oct_ddpm", "oct_classifier"}
    assert not find(classes=["DME", "melanoma"], paths=[releases])
    assert {e.name for e in find(task="latent space", paths=[releases])} == {"oct_ldm"}


def test_zoo_list_and_info_on_the_command_line(releases: Path, medicraft) -> None:
    listed = medicraft(
        "zoo", "list", "--paths", str(releases), "--task", "generation", "--classes", "DME", "--sort-by",
        "frechet_distance",
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    names = [line.split()[:2] for line in listed.stdout.splitlines()[2:]]
    # smallest Frechet distance first: the shipped generators (their held-out figures), the newer tiny archive
    # (12.25) and the older tiny folder (40.5), in the order of their distances
    shipped = {n: _metadata(bundles_root() / n) for n in ("oct_ldm", "oct_ddpm")}
    expected = sorted(
        [(m["eval_metrics"]["frechet_distance"], [n, m["version"]]) for n, m in shipped.items()]
        + [(12.25, ["tiny_oct_ddpm", "1.1.0"]), (40.5, ["tiny_oct_ddpm", "1.0.0"])]
    )
    assert names[:4] == [entry for _, entry in expected]
    archive = 2 + [entry for _, entry in expected].index(["tiny_oct_ddpm", "1.1.0"])
    assert "12.25" in listed.stdout.splitlines()[archive] and "archive:" in listed.stdout.splitlines()[archive]
    as_json = medicraft("zoo", "list", "--paths", str(releases), "--as_json")
    assert as_json.returncode == 0, as_json.stderr
    entries = json.loads(as_json.stdout)
    assert {(e["name"], e["measured"]) for e in entries} >= {("tiny_unmeasured", False), ("oct_classifier", True)}

    newest = medicraft("zoo", "info", "tiny_oct_ddpm", "--paths", str(releases))
    assert newest.returncode == 0, newest.stderr
    assert newest.stdout.startswith("tiny_oct_ddpm 1.1.0: ") and "frechet_distance: 12.25" in newest.stdout
    assert f"classes: {', '.join(CLASSES)}" in newest.stdout and "model card (docs/README.md): " in newest.stdout
    shipped = medicraft("zoo", "info", "oct_ldm")
    assert "eval_metrics:\n" in shipped.stdout and "  TSTR_balanced_accuracy: " in shipped.stdout, shipped.stdout
    unmeasured = medicraft(
        "zoo", "info", "tiny_unmeasured", "--paths", str(releases)
    )  # every shipped bundle is measured
    assert "eval_metrics: unmeasured" in unmeasured.stdout, unmeasured.stdout
    missing = medicraft("zoo", "info", "no_such_bundle")
    assert missing.returncode == 2 and "'no_such_bundle': no bundle of that name at hand (known: " in missing.stderr
    assert info(releases / "tiny_oct_ddpm").version == "1.0.0"


def test_a_path_that_is_not_a_bundle_is_named(tmp_path: Path) -> None:
    (tmp_path / "notes.zip").write_bytes(b"not a bundle")
    with pytest.raises(ValueError, match=f"{tmp_path / 'notes.zip'}: not a bundle archive"):
        scan(tmp_path / "notes.zip")
    with pytest.raises(FileNotFoundError, match="no such bundle folder, archive or folder of bundles"):
        scan(tmp_path / "missing")
    broken = tmp_path / "broken"
    (broken / "configs").mkdir(parents=True)
    (broken / "configs" / "metadata.json").write_text("{not json")
    with pytest.raises(ValueError, match=f"{broken}: configs/metadata.json is not a JSON object"):
        scan(broken)


def test_which_way_a_metric_ranks() -> None:
    for lower in ("frechet_distance", "fd_oct", "FID", "kid", "memorisation_rate", "val_loss", "tstr/error"):
        assert not higher_is_better(lower), lower
    for higher in ("balanced_accuracy", "tstr/balanced_accuracy", "anatomy_pass_rate", "macro_auc", "trtr"):
        assert higher_is_better(higher), higher
