"""Training samples per second of each bundle's own training config: the bundle default against fp32 eager.

Every bundle that trains is run through its own configs (``configs/common.json`` + the training config) with
``monai.bundle.ConfigWorkflow``, as ``python -m monai.bundle run`` runs them, on real OCT2017 B-scans, twice in
the same process and run:

- **default**: the bundle's settings as shipped (``cpu_bf16`` is ``bf16_is_fast('cpu')``: bf16 autocast where the
  CPU has AMX or AVX512-BF16, fp32 elsewhere; on a GPU, the bundle's ``amp``),
- **fp32 eager**: ``cpu_bf16 false`` (and ``amp false``), the baseline.

The rate is measured by an ignite handler on the bundle's own trainer: images per second between the end of the
warm-up iterations and the last measured iteration, so it includes the data loader's share (a ``CacheDataset``:
the deterministic transforms are cached before the run, the random ones run per batch) and the optimiser. The
networks are the bundle defaults, which are the settings of the shipped weights. ``oct_synthesis_eval`` trains
nothing (it ships the classifier's trunk) and is not listed.

Figures are ratios against the fp32 row of the same run; the seconds depend on the machine of the day.

    python benchmarks/training_speed.py [--iters 8] [--warmup 2] [--only oct_ddpm oct_ldm] [--quick]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "oct2017"

#: (bundle, training config, what it trains, extra overrides). The overrides only move outputs and turn off the
#: periodic work (validation, sample grids) that is not training; the network and batch are the bundle's own.
RUNS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("oct_ddpm", "train.json", "pixel-space diffusion UNet", {"grid_interval": 10_000}),
    ("oct_ldm", "train_autoencoder.json", "latent autoencoder (stage 1)", {}),
    (
        "oct_ldm",
        "train.json",
        "latent diffusion UNet (stage 2, shipped autoencoder)",
        {
            "autoencoder_ckpt_path": str(REPO / "bundles" / "oct_ldm" / "models" / "autoencoder.pt"),
            "grid_interval": 10_000,
        },
    ),
    ("oct_classifier", "train.json", "DenseNet121 classifier", {}),
    ("oct_context_restoration", "train.json", "context-restoration UNet (pretraining)", {}),
]


def subset_datalist(source: Path, n_train: int, out: Path) -> Path:
    """A datalist of ``n_train`` training items (classes in turn), one validation item per class and the test split
    (the patient-level splits of ``build_datalist``, subsetted, so no patient crosses splits)."""
    from medicraft_monai.data import build_datalist

    full = build_datalist(source)
    by_class: dict[int, list[dict]] = {}
    for it in full["training"]:
        by_class.setdefault(int(it["label"]), []).append(it)
    train, i = [], 0
    while len(train) < n_train:
        pool = by_class[sorted(by_class)[i % len(by_class)]]
        if pool:
            train.append(pool.pop(0))
        i += 1
    val = {}
    for it in full["validation"]:
        val.setdefault(int(it["label"]), it)
    data = {k: v for k, v in full.items() if k not in ("training", "validation", "test")}
    data.update(training=train, validation=list(val.values()), test=full["test"])
    out.write_text(json.dumps(data))
    return out


def batch_len(batch) -> int:
    """Images in a batch: a tensor, a dict of them, a (image, label) tuple, or a list of per-image dicts."""
    if hasattr(batch, "shape"):
        return int(batch.shape[0])
    if isinstance(batch, dict):
        return batch_len(batch["image"] if "image" in batch else next(iter(batch.values())))
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], dict):
        return len(batch)
    return batch_len(batch[0])


class IterationClock:
    """Times a trainer's iterations after ``warmup`` of them and stops it after ``warmup + iters``."""

    def __init__(self, warmup: int, iters: int) -> None:
        self.warmup, self.iters = warmup, iters
        self.stamps: list[float] = []
        self.samples = 0

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        n = engine.state.iteration
        if n >= self.warmup:
            self.stamps.append(time.perf_counter())
            if n > self.warmup:
                self.samples += batch_len(engine.state.batch)
        if n >= self.warmup + self.iters:
            engine.terminate()

    @property
    def samples_per_s(self) -> float:
        return self.samples / (self.stamps[-1] - self.stamps[0])


def measure(bundle: str, config: str, overrides: dict[str, Any], warmup: int, iters: int) -> float:
    """Training images per second of one bundle config with ``overrides``."""
    from monai.bundle import ConfigWorkflow

    from medicraft_monai.bundles import config_files

    root = REPO / "bundles" / bundle
    flow = ConfigWorkflow(
        config_file=[str(p) for p in config_files(root, config)],
        meta_file=str(root / "configs" / "metadata.json"),
        logging_file=False,
        workflow_type=None,
        bundle_root=str(root),
        **overrides,
    )
    flow.initialize()
    clock = IterationClock(warmup, iters)
    try:
        clock.attach(flow.parser.get_parsed_content("train#trainer"))
        flow.run()
    finally:
        flow.finalize()
    if len(clock.stamps) < 2:
        raise RuntimeError(f"{bundle}/{config}: the trainer stopped after {len(clock.stamps)} timed iterations")
    return clock.samples_per_s


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA, help="a folder of OCT class folders or a datalist JSON")
    ap.add_argument("--warmup", type=int, default=2, help="iterations before timing starts")
    ap.add_argument("--iters", type=int, default=8, help="timed iterations per bundle and precision")
    ap.add_argument("--only", nargs="+", default=None, help="bundle names to run (default: all that train)")
    ap.add_argument("--quick", action="store_true", help="CI-size run: 1 warm-up and 2 timed iterations")
    ap.add_argument("--json", type=Path, default=None, help="also write the table as JSON here")
    return ap.parse_args(argv)


def main(argv=None) -> list[dict[str, Any]]:
    import warnings

    import torch
    from monai.bundle import ConfigParser

    from medicraft_monai.bundles import config_files
    from medicraft_monai.inferers import bf16_is_fast

    warnings.filterwarnings("ignore", message="parsing config_file")
    args = parse_args(argv)
    if args.quick:
        args.warmup, args.iters = 1, 2
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(
        f"device {device}, {torch.get_num_threads()} threads, bf16 native on this CPU: {bf16_is_fast('cpu')}; "
        f"{args.warmup} warm-up + {args.iters} timed iterations per row"
    )
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="medicraft_train_speed_") as tmp:
        for bundle, config, what, extra in RUNS:
            if args.only and bundle not in args.only:
                continue
            parser = ConfigParser()
            parser.read_config([str(p) for p in config_files(REPO / "bundles" / bundle, config)])
            batch = int(parser.get_parsed_content("batch_size"))
            data = Path(args.data)
            datalist = (
                data
                if data.suffix == ".json"
                else subset_datalist(data, batch * (args.warmup + args.iters + 1), Path(tmp) / "datalist.json")
            )
            rates = {}
            for precision, flags in (("fp32 eager", {"cpu_bf16": False, "amp": False}), ("default", {})):
                out = Path(tmp) / f"{bundle}_{Path(config).stem}_{precision.split()[0]}"
                overrides = {
                    "datalist": str(datalist),
                    "ckpt_dir": str(out / "models"),
                    "log_dir": str(out / "logs"),
                    "max_epochs": 1,
                    "val_interval": 10_000,
                    "num_workers": 0,
                    **extra,
                    **flags,
                }
                rates[precision] = measure(bundle, config, overrides, args.warmup, args.iters)
            default_is = "bf16 autocast" if (device == "cuda" or bf16_is_fast("cpu")) else "fp32"
            rows.append(
                {
                    "bundle": bundle,
                    "config": config,
                    "trains": what,
                    "batch": batch,
                    "default_precision": default_is,
                    "fp32_samples_per_s": rates["fp32 eager"],
                    "default_samples_per_s": rates["default"],
                    "speedup": rates["default"] / rates["fp32 eager"],
                }
            )
            print(f"  {bundle}/{config}: {rates['default']:.2f} vs {rates['fp32 eager']:.2f} images/s", flush=True)
    print("\n| bundle | config | trains | batch | default | default images/s | fp32 eager images/s | default / fp32 |")
    print("| --- | --- | --- | ---: | --- | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['bundle']} | {r['config']} | {r['trains']} | {r['batch']} | {r['default_precision']} | "
            f"{r['default_samples_per_s']:.2f} | {r['fp32_samples_per_s']:.2f} | {r['speedup']:.2f}x |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
