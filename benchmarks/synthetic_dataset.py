"""Throughput of synthetic training data made on the fly (``SyntheticDataset``) against reading the same images from
disk, measured in one run.

What it prints (images per second, and ratios against the disk baseline of the same run):

1. ``generator``: the generator alone, ``DiffusionGenerator.generate`` on blocks of ``--batch-size`` (the rate a
   dataset that samples can at best reach).
2. ``synthetic, cold cache``: a DataLoader (``--workers``) over a ``SyntheticDataset`` with an empty cache: every
   image sampled, written to the cache and read back through the transform.
3. ``synthetic, warm cache``: the same dataset read again (a second epoch: every image in the cache).
4. ``disk``: a plain ``monai.data.Dataset`` of the same PNG files (copied out of the cache) through the same
   transform and DataLoader: what reading a multiplied data set costs.

The cold/generator ratio says how much of the generator's own rate a training run gets when it samples on the fly
(the rest is writing and reading PNGs); warm/disk says what the cache costs on top of plain files once it is filled.

Usage::

    python benchmarks/synthetic_dataset.py [--bundle oct_ldm] [--per-class 16] [--batch-size 8] [--workers 0]
        [--steps N] [--device cpu] [--threads 2] [--repeats 3] [--random-weights] [--quick]

``--bundle`` is a shipped generator's name, a folder or a release archive (default ``oct_ldm``; it needs trained
weights, or ``--random-weights``: its own settings with random weights, the same speed). ``--quick`` (CI size) uses a tiny oct_ddpm with random weights (speed does not depend on their values), 4
images per class in blocks of 4. The dataset samples whole blocks: a count per class that is not a multiple of the
block size costs the rest of its last block in sampling.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path


def tiny_random_bundle(folder: Path) -> Path:
    """A tiny oct_ddpm (32 x 64, two levels, no attention) with random weights, exported to a bundle folder."""
    import torch

    from medicraft_monai.bundles import bundle_path
    from medicraft_monai.networks import bundle_parser, randomise_zero_weights
    from medicraft_monai.networks.release import export_bundle

    settings = {"class_names": ["CNV", "DME", "DRUSEN", "NORMAL"], "image_size": [32, 64], "channels": [16, 32]}
    settings.update(attention_levels=[False, False], num_res_blocks=1, norm_num_groups=8)
    torch.manual_seed(0)
    network = randomise_zero_weights(
        bundle_parser(bundle_path("oct_ddpm"), overrides=settings).get_parsed_content("network_def")
    )
    weights = folder / "weights" / "model.pt"
    weights.parent.mkdir(parents=True)
    torch.save(network.state_dict(), weights)
    return export_bundle(bundle_path("oct_ddpm"), weights, folder / "tiny_oct_ddpm", settings)["bundle_root"]


def random_weights_copy(bundle: str, folder: Path) -> Path:
    """A copy of a bundle with random weights of its own settings: the UNet (``models/model.pt``) and, for a latent
    generator, the autoencoder and ``latent.json`` (scale factor 1). Sampling speed does not depend on the values."""
    import json

    import torch

    from medicraft_monai.bundles import resolve_bundle
    from medicraft_monai.networks import bundle_parser, randomise_zero_weights
    from medicraft_monai.utils import file_sha256

    source = resolve_bundle(bundle)
    copy = Path(shutil.copytree(source, folder / source.name, ignore=shutil.ignore_patterns("models")))
    (copy / "models").mkdir()
    parser = bundle_parser(copy)
    torch.manual_seed(0)
    torch.save(
        randomise_zero_weights(parser.get_parsed_content("network_def")).state_dict(), copy / "models" / "model.pt"
    )
    if "autoencoder_def" in parser:
        autoencoder = copy / "models" / "autoencoder.pt"
        torch.save(parser.get_parsed_content("autoencoder_def").state_dict(), autoencoder)
        latent = {"scale_factor": 1.0, "autoencoder_sha256": file_sha256(autoencoder)}
        (copy / "models" / "latent.json").write_text(json.dumps(latent))
    return copy


def rate(loader, repeats: int = 1) -> tuple[float, int]:
    """Images per second of iterating ``loader`` ``repeats`` times (the best pass), and the images per pass."""
    best, count = float("inf"), 0
    for _ in range(repeats):
        start, count = time.perf_counter(), 0
        for batch in loader:
            count += int(batch["image"].shape[0])
        best = min(best, time.perf_counter() - start)
    return count / best, count


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="oct_ldm", help="generator bundle: shipped name, folder or release archive")
    ap.add_argument("--per-class", type=int, default=16, help="synthetic images per class")
    ap.add_argument("--batch-size", type=int, default=8, help="the dataset's block size and the generator's batch")
    ap.add_argument("--loader-batch", type=int, default=8, help="the DataLoader's batch size")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default: the bundle's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=3, help="passes over the warm cache and the disk set (best kept)")
    ap.add_argument("--quick", action="store_true", help="tiny random-weight generator, 4 images per class")
    ap.add_argument("--random-weights", action="store_true", help="the bundle's settings with random weights")
    ap.add_argument("--output", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    import torch
    from monai.data import DataLoader, Dataset

    from medicraft_monai.synthesis import SyntheticDataset, load_generator
    from medicraft_monai.synthesis.dataset import default_transform
    from medicraft_monai.synthesis.generation import generation_tasks

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="medicraft-synthetic-benchmark-"))
    try:
        if args.quick:
            bundle = tiny_random_bundle(work)
        else:
            bundle = random_weights_copy(args.bundle, work) if args.random_weights else args.bundle
        per_class, block_size = (4, 4) if args.quick else (args.per_class, args.batch_size)
        generator = load_generator(bundle, device=args.device)
        steps = args.steps or generator.num_inference_steps
        classes = generator.class_names
        print(
            f"generator {Path(generator.bundle_root).name}: {generator.image_shape[1]} x {generator.image_shape[2]}, "
            f"{generator.sampler} {steps} steps, {len(classes)} classes x {per_class} images, block "
            f"{block_size}, DataLoader batch {args.loader_batch}, {args.workers} worker(s), "
            f"{torch.get_num_threads()} thread(s), device {args.device}",
            flush=True,
        )

        # 1. the generator alone, in full batches of the block size (one warm-up batch first)
        tasks = generation_tasks(generator, None, per_class, seed=0)
        blocks = [tasks[i : i + block_size] for i in range(0, len(tasks), block_size)]
        blocks = [b + [b[-1]] * (block_size - len(b)) for b in blocks]
        with torch.no_grad():
            generator.generate([t.class_name for t in blocks[0]], [t.seed for t in blocks[0]], steps)
            start = time.perf_counter()
            for block in blocks:
                generator.generate([t.class_name for t in block], [t.seed for t in block], steps)
        generator_rate = len(blocks) * block_size / (time.perf_counter() - start)

        # 2. and 3. the synthetic dataset, cold then warm
        dataset = SyntheticDataset(generator, per_class, work / "cache", seed=0, steps=steps, batch_size=block_size)

        def loader(ds):
            return DataLoader(ds, batch_size=args.loader_batch, shuffle=False, num_workers=args.workers)

        cold_rate, n = rate(loader(dataset))
        warm_rate, _ = rate(loader(dataset), args.repeats)

        # 4. the same files as a plain data set on disk
        disk = work / "disk"
        items = []
        for i, item in enumerate(dataset.data):
            target = disk / f"{i:06d}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(item["image"], target)
            items.append({"image": str(target), "label": item["label"]})
        disk_rate, _ = rate(loader(Dataset(items, transform=default_transform())), args.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    figures = {
        "images": n,
        "generator_images_per_s": generator_rate,
        "synthetic_cold_images_per_s": cold_rate,
        "synthetic_warm_images_per_s": warm_rate,
        "disk_images_per_s": disk_rate,
        "cold_vs_disk": cold_rate / disk_rate,
        "warm_vs_disk": warm_rate / disk_rate,
        "cold_vs_generator": cold_rate / generator_rate,
    }
    rows = [
        ("generator alone (blocks)", generator_rate),
        ("synthetic, cold cache", cold_rate),
        ("synthetic, warm cache", warm_rate),
        ("disk: the same PNG files", disk_rate),
    ]
    print(f"\n| source ({n} images) | images / s | vs disk |\n| --- | ---: | ---: |")
    for name, value in rows:
        print(f"| {name} | {value:,.1f} | {value / disk_rate:.3g}x |")
    print(
        f"\ncold cache / generator alone: {figures['cold_vs_generator']:.2f} "
        f"(the share of the generator's rate a run sampling on the fly gets)"
    )
    if args.output:
        Path(args.output).write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()
