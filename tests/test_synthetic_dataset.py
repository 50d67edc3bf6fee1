"""Synthetic training data on the fly: ``SyntheticDataset`` and the classifier bundle's ``synthetic_*`` keys.

The generator is oct_ddpm trained one tiny epoch on real OCT2017 B-scans and exported to a bundle folder
(``_generators.py``). What is proved: labels follow the dataset's class order; images are determined by the seed
(and equal ``generate``'s); a second dataset on the same cache samples nothing; two DataLoader workers sample each
block once; a bounded cache evicts the least recently used images and samples them again to the same pixels; a run
killed half-way resumes, sampling only the missing blocks; the classifier bundle trains on real plus synthetic.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import test_oct_classifier as classifier
import test_oct_ddpm as ddpm
import torch
from _generators import IMAGE_SIZE, tiny_generator_bundle
from monai.data import DataLoader, MetaTensor
from test_zoo_smoke import workflow

from medicraft_monai.engines.records import GeneratorError
from medicraft_monai.synthesis import SyntheticDataset, generate
from medicraft_monai.synthesis.dataset import synthetic_counts
from medicraft_monai.synthesis.plan import image_seed
from medicraft_monai.synthesis.writers import to_uint

REPO = Path(__file__).resolve().parents[1]
datalist = ddpm.datalist  # the fixture: 2 training and 1 validation real B-scan per OCT2017 class
STEPS = 3
SETTINGS = {"seed": 7, "steps": STEPS, "batch_size": 2, "device": "cpu"}
COUNTS = {"DME": 5, "NORMAL": 2}
ORDER = ["NORMAL", "DME"]  # the dataset's label order differs from the generator's on purpose


@pytest.fixture(scope="module")
def bundle(datalist: Path, tmp_path_factory) -> Path:
    return tiny_generator_bundle(tmp_path_factory.mktemp("generators") / "tiny_oct_ddpm", datalist)


def dataset(bundle: Path, cache: Path, **changes) -> SyntheticDataset:
    counts = changes.pop("counts", COUNTS)
    return SyntheticDataset(bundle, counts, cache, **{"class_names": ORDER, **SETTINGS, **changes})


def uint8(image: torch.Tensor) -> np.ndarray:
    """A [0, 1] image read back from an 8-bit PNG, as the 8-bit values it was stored with (exact: k/255)."""
    return np.round(image.numpy()[0] * 255).astype(np.uint8)


def blocks(ds: SyntheticDataset) -> Counter:
    return Counter((b["class_name"], b["block"]) for b in ds.blocks())


def test_items_are_labelled_and_determined_by_the_seed(bundle: Path, tmp_path: Path) -> None:
    ds = dataset(bundle, tmp_path / "a")
    assert len(ds) == 7 and [ds.data[i]["class_name"] for i in range(7)] == ["NORMAL"] * 2 + ["DME"] * 5
    items = [ds[i] for i in range(len(ds))]
    assert [it["label"] for it in items] == [0, 0, 1, 1, 1, 1, 1] and all(it["synthetic"] for it in items)
    image = items[3]["image"]
    assert isinstance(image, MetaTensor) and image.shape == (1, *IMAGE_SIZE) and 0 <= image.min() <= image.max() <= 1
    assert items[3]["seed"] == image_seed(7, "DME", 1) and json.loads(image.meta["provenance"])["steps"] == STEPS
    # image i of DME is generate's image i (blocks of batch_size, whatever the count asked for)
    reference = generate(bundle, class_name="DME", num_samples=6, seed=7, steps=STEPS, batch_size=2, device="cpu")
    for i in range(5):
        assert np.array_equal(uint8(items[2 + i]["image"]), to_uint(reference[i].numpy()[0], 8)), i
    # the same seed in another cache folder: the same images; another seed: other images
    again = dataset(bundle, tmp_path / "b")
    assert all(np.array_equal(uint8(again[i]["image"]), uint8(items[i]["image"])) for i in range(7))
    other = dataset(bundle, tmp_path / "c", seed=8)
    assert not np.array_equal(uint8(other[2]["image"]), uint8(items[2]["image"]))
    with pytest.raises(GeneratorError, match="'melanoma' is not one of the dataset's class_names"):
        dataset(bundle, tmp_path / "d", counts={"melanoma": 1})
    with pytest.raises(ValueError, match="cache_size .* at least one block"):
        dataset(bundle, tmp_path / "d", cache_size=1)


def test_a_second_dataset_on_the_same_cache_samples_nothing(bundle: Path, tmp_path: Path) -> None:
    first = dataset(bundle, tmp_path)
    pixels = [uint8(first[i]["image"]) for i in range(len(first))]
    assert first.stats == {"generated": 4, "reused": 3}  # NORMAL: 1 block, DME: 3 blocks of 2
    assert set(blocks(first).values()) == {1}
    second = dataset(bundle, tmp_path)
    assert second.root == first.root
    assert all(np.array_equal(uint8(second[i]["image"]), pixels[i]) for i in range(len(second)))
    assert second.stats == {"generated": 0, "reused": 7} and blocks(second) == blocks(first)
    # other sampling settings are another cache: nothing of the first is taken for them
    assert dataset(bundle, tmp_path, steps=STEPS + 1).root != first.root


def test_two_workers_share_the_cache_and_sample_each_block_once(bundle: Path, tmp_path: Path) -> None:
    ds = dataset(bundle, tmp_path / "workers", counts={"DME": 8, "NORMAL": 4}, batch_size=4)
    # batches of one: workers 0 and 1 ask for neighbouring images of the same block at the same time
    loader = DataLoader(ds, batch_size=1, shuffle=False, num_workers=2)
    got = [(int(b["label"][0]), uint8(b["image"][0])) for b in loader]
    assert [label for label, _ in got] == [0] * 4 + [1] * 8
    made = ds.blocks()
    assert blocks(ds) == Counter({("NORMAL", 0): 1, ("DME", 0): 1, ("DME", 1): 1}), made
    assert os.getpid() not in {b["pid"] for b in made}, "the workers sampled, not the main process"
    alone = dataset(bundle, tmp_path / "alone", counts={"DME": 8, "NORMAL": 4}, batch_size=4)
    assert all(np.array_equal(px, uint8(alone[i]["image"][0:1])) for i, (_, px) in enumerate(got))


def test_a_bounded_cache_keeps_the_recently_used_images(bundle: Path, tmp_path: Path) -> None:
    ds = dataset(bundle, tmp_path, counts={"DME": 6, "NORMAL": 0}, cache_size=4)
    first = [uint8(ds[i]["image"]) for i in range(6)]
    on_disk = sorted(p.name for p in (ds.root / "images" / "DME").glob("*.png"))
    assert len(on_disk) == 4 and on_disk == sorted(Path(ds.data[i]["image"]).name for i in (2, 3, 4, 5))
    assert np.array_equal(uint8(ds[0]["image"]), first[0]), "an evicted image is sampled again, the same"
    assert blocks(ds)[("DME", 0)] == 2 and len(list((ds.root / "images" / "DME").glob("*.png"))) == 4


KILLED_RUN = """
import os, signal, sys
from medicraft_monai.synthesis import SyntheticDataset
ds = SyntheticDataset(sys.argv[1], {"DME": 8}, sys.argv[2], seed=7, steps=3, batch_size=2, device="cpu")
for i in range(len(ds)):
    ds[i]
    if i == 4:  # three blocks of four are on disk
        os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_run_resumes_sampling_only_what_is_missing(bundle: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, str(bundle), str(cache)], capture_output=True, timeout=300
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-3000:]
    resumed = SyntheticDataset(bundle, {"DME": 8}, cache, seed=7, steps=STEPS, batch_size=2, device="cpu")
    assert blocks(resumed) == Counter({("DME", 0): 1, ("DME", 1): 1, ("DME", 2): 1})
    # what a kill inside a block leaves: one image of the block missing, a temporary file of a dead process
    first_of_block_2 = Path(resumed.data[4]["image"])
    first_of_block_2.unlink()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = first_of_block_2.with_name(f".{first_of_block_2.stem}.tmp{dead.pid}.png")
    leftover.write_bytes(b"half a PNG")
    resumed = SyntheticDataset(bundle, {"DME": 8}, cache, seed=7, steps=STEPS, batch_size=2, device="cpu")
    assert not leftover.exists(), "a dead process's temporary file is removed"
    images = [uint8(resumed[i]["image"]) for i in range(8)]
    assert resumed.stats == {"generated": 2, "reused": 6}  # block 2 again (one image was missing), block 3
    assert blocks(resumed) == Counter({("DME", 0): 1, ("DME", 1): 1, ("DME", 2): 2, ("DME", 3): 1})
    whole = SyntheticDataset(bundle, {"DME": 8}, tmp_path / "whole", seed=7, steps=STEPS, batch_size=2, device="cpu")
    assert all(np.array_equal(images[i], uint8(whole[i]["image"])) for i in range(8)), "as if never interrupted"


def test_synthetic_counts_from_a_ratio_per_class_and_counts() -> None:
    real = [{"label": 0}] * 5 + [{"label": 1}] * 2 + [{"label": 1, "synthetic": True}] * 9
    assert synthetic_counts(real, ["A", "B"], 0.5) == {"A": 3, "B": 1}  # rounded half up; synthetic items not counted
    assert synthetic_counts(real, ["A", "B"], {"B": 2.0}, {"A": 10}) == {"A": 10, "B": 4}
    with pytest.raises(ValueError, match="synthetic_ratio: class 'C' is not one of the class_names"):
        synthetic_counts(real, ["A", "B"], {"C": 1.0})
    with pytest.raises(ValueError, match="synthetic_counts: the value for class 'A' must be a number >= 0"):
        synthetic_counts(real, ["A", "B"], 0.0, {"A": -1})


def test_the_classifier_bundle_trains_on_real_plus_synthetic_images(
    bundle: Path, datalist: Path, tmp_path: Path
) -> None:
    net = {**classifier.TINY, "class_names": ddpm.CLASSES, "datalist": str(datalist)}
    synthetic = {
        "synthetic_bundle": str(bundle),
        "synthetic_ratio": 1.0,  # as many synthetic as real images of each class (2)...
        "synthetic_counts": {"DRUSEN": 3},  # ...but 3 of DRUSEN
        "synthetic_steps": STEPS,
        "synthetic_cache_dir": str(tmp_path / "cache"),
    }
    workflow("oct_classifier", "train.json", "train", tmp_path, **net, **classifier.TRAIN, **synthetic, max_epochs=1)
    assert (tmp_path / "models" / "model.pt").is_file()
    made = sorted(
        p.relative_to(next((tmp_path / "cache").iterdir())).parts[1] for p in (tmp_path / "cache").rglob("*.png")
    )
    assert Counter(made) == {"CNV": 2, "DME": 2, "DRUSEN": 3, "NORMAL": 2}, made
    # trained on 8 real + 9 synthetic images: 17 items, batches of 4, in one epoch
    events = (tmp_path / "logs").glob("events.out.tfevents.*")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = []
    for event in events:
        acc = EventAccumulator(str(event))
        acc.Reload()
        if "train/loss" in acc.Tags()["scalars"]:
            steps += [e.step for e in acc.Scalars("train/loss")]
    assert max(steps) == -(-17 // classifier.TRAIN["batch_size"]), steps
