"""Quality against sampling steps: DDIM and DPM-Solver++ (2M) on a trained model, against DDIM-50 and its spread.

For each sampler ("ddim", "dpmpp_2m") and step count (default 5, 10, 15, 20, 25, 50) the same seeds are sampled
(``--per-class`` images of every class) from a class-conditioned ``oct_ddpm`` model trained on phantom data, and
scored against the real training images with

- the **Frechet distance** of OCT features (``medicraft_monai.metrics.features`` / ``fidelity.frechet_distance``):
  the ``oct_classifier`` bundle when it has trained weights, otherwise a small MONAI ``DenseNet`` trained here for
  a few epochs to tell the phantom classes apart (the report says which);
- the **anatomy pass rate** (``medicraft_monai.metrics.anatomy``, the phantom's checker).

DDIM-50, the bundle's former default, is the reference: it is sampled with ``--reference-seeds`` different seed sets
to measure the run-to-run spread (max - min). The chosen default is the fewest DPM-Solver++ steps whose Frechet
distance is at most DDIM-50's mean + spread and whose pass rate is at least DDIM-50's mean - spread. At that step
count the images are also sampled in fp32 and in bf16 + channels_last, to show that bf16 keeps them (mean absolute
difference, PSNR, and both Frechet distances).

Without ``--ckpt`` the script makes a phantom data set and trains the model itself in ``--work-dir`` (small settings;
reused on a rerun). It prints one table, writes ``--json`` and the curve ``--plot`` (PNG).

Usage::

    python benchmarks/quality_vs_steps.py [--work-dir /tmp/medicraft_quality] [--ckpt model.pt --datalist dl.json]
        [--image-size 64 128] [--channels 16 32 32] [--epochs 5] [--steps 5 10 15 20 25 50] [--per-class 16]
        [--reference-seeds 0 1 2] [--plot docs/images/quality_vs_steps.png] [--json out.json] [--quick]
    python benchmarks/quality_vs_steps.py --model shipped [--student distill/student/model.pt] ...

``--model shipped`` scores the shipped ``oct_ddpm`` weights and their distilled student on the real OCT2017 sample
instead (DPM-Solver++ 8 as the reference); ``--student`` scores a candidate student (a ``distill.json`` run's
``model.pt`` with its ``diffusion.json``) in place of the bundle's, at the step count it was distilled for, without
copying it into the bundle.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medicraft_monai.bundles import bundle_path  # noqa: E402 (after the checkout is on the path)

BUNDLE = bundle_path("oct_ddpm")
SAMPLERS = ("ddim", "dpmpp_2m")


def _say(msg: str) -> None:
    print(f"[quality_vs_steps] {msg}", flush=True)


def settings(args):
    from medicraft_monai.demo import DemoSettings

    return DemoSettings(
        exams=args.exams,
        phantom_size=(args.phantom_height, args.phantom_width),
        image_size=tuple(args.image_size),
        channels=tuple(args.channels),
        attention_levels=tuple([False] * (len(args.channels) - 1) + [True]),
        max_epochs=args.epochs,
        batch_size=args.train_batch,
        prediction_type=args.prediction_type,
    )


def prepare_model(args, work: Path) -> tuple[Path, Path, list[str]]:
    """The datalist, the trained weights and the class names (made in ``work`` when not given)."""
    from medicraft_monai.data.datalist import load_datalist
    from medicraft_monai.data.phantom import make_phantom_dataset
    from medicraft_monai.demo import DEMO_PREVALENCE, _train

    s = settings(args)
    datalist = Path(args.datalist) if args.datalist else work / "phantom" / "datalist.json"
    if not datalist.is_file():
        _say(f"writing a phantom data set ({s.exams} exams) to {datalist.parent}")
        make_phantom_dataset(
            datalist.parent,
            exams=s.exams,
            prevalence=DEMO_PREVALENCE,
            height=s.phantom_size[0],
            width=s.phantom_size[1],
            progress=False,
        )
    d = load_datalist(datalist)
    names = [d["labels"][str(i)] for i in range(len(d["labels"]))]
    ckpt = Path(args.ckpt) if args.ckpt else work / "model" / "model.pt"
    if not ckpt.is_file():
        _say(f"training oct_ddpm ({s.max_epochs} epochs, {s.image_size}, channels {s.channels}) in {work}")
        ckpt = _train(BUNDLE, datalist, names, work, s)
    return datalist, ckpt, names


def real_images(args, datalist: Path, split: str = "training"):
    """The real images of a split, preprocessed exactly as oct_ddpm's training does, in [0, 1], and their labels."""
    import torch
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    from medicraft_monai.data.datalist import load_datalist

    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / n) for n in ("common.json", "train.json")])
    parser["bundle_root"] = str(BUNDLE)
    parser["image_size"] = list(args.image_size)
    transforms = Compose(parser.get_parsed_content("train#deterministic_transforms"))
    items = load_datalist(datalist)[split]
    images, labels = [], []
    for it in items:
        out = transforms(dict(it))
        images.append((torch.as_tensor(out["image"]).float() + 1) / 2)
        labels.append(int(it["label"]))
    return torch.stack(images).clamp(0, 1), torch.tensor(labels)


def feature_extractor(args, work: Path, real, labels, n_classes: int):
    """The OCT feature extractor: the fixed one of oct_synthesis_eval when it ships, else a small DenseNet trained
    here."""
    import torch
    from monai.networks.nets import DenseNet

    from medicraft_monai.metrics.features import DEFAULT_BUNDLE, FeatureExtractor

    if args.features in ("auto", "bundle") and (DEFAULT_BUNDLE / "models" / "model.pt").is_file():
        try:
            fe = FeatureExtractor.from_bundle(DEFAULT_BUNDLE)
            return fe, f"{fe.name} (sha256 {fe.checksum[:12]})"
        except Exception as err:  # noqa: BLE001 - fall back to our own small network, and say so
            if args.features == "bundle":
                raise
            _say(f"fixed OCT feature extractor not usable ({err}); training a small DenseNet instead")
    net = DenseNet(
        spatial_dims=2, in_channels=1, out_channels=n_classes, init_features=16, growth_rate=16, block_config=(4, 4, 4)
    )
    path = work / f"densenet_{args.image_size[0]}x{args.image_size[1]}.pt"
    if path.is_file():
        net.load_state_dict(torch.load(path, weights_only=True))
    else:
        _say(f"training a small DenseNet feature extractor on {len(real)} real images ({args.fe_epochs} epochs)")
        torch.manual_seed(0)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        net.train()
        for _ in range(args.fe_epochs):
            perm = torch.randperm(len(real))
            for s in range(0, len(real), 16):
                idx = perm[s : s + 16]
                x = real[idx]
                x = torch.where(torch.rand(len(idx), 1, 1, 1) < 0.5, x, x.flip(-1))
                loss = torch.nn.functional.cross_entropy(net(x), labels[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        torch.save(net.state_dict(), path)
    net.eval()
    with torch.inference_mode():
        acc = float((net(real).argmax(1) == labels).float().mean())
    return FeatureExtractor.from_network(net), f"small MONAI DenseNet trained here (training accuracy {acc:.2f})"


def load_generator(args, ckpt: Path, names: list[str], sampler: str, amp: bool):
    from medicraft_monai.synthesis.generator import DiffusionGenerator

    s = settings(args)
    fast = {"amp_dtype": "bfloat16", "channels_last": True} if amp else {}
    overrides = {**s.network_overrides(), "class_names": names, "sampler": sampler, **fast}
    return DiffusionGenerator.from_bundle(BUNDLE, ckpt_path=ckpt, device="cpu", overrides=overrides)


def sample_set(gen, names: list[str], per_class: int, seed_set: int, steps: int, batch: int):
    """``per_class`` images of every class; seed set ``k`` uses seeds ``k * 100000 + i``."""
    import numpy as np
    import torch

    classes = [c for c in names for _ in range(per_class)]
    seeds = [seed_set * 100000 + i for i in range(len(classes))]
    out = []
    for s in range(0, len(classes), batch):
        out.append(gen.generate(classes[s : s + batch], seeds[s : s + batch], num_inference_steps=steps))
    return torch.from_numpy(np.concatenate(out)), [names.index(c) for c in classes]


def score(images, labels, real_feats, extractor, checker) -> dict[str, float]:
    from medicraft_monai.metrics.anatomy import check_images, summarise
    from medicraft_monai.metrics.features import extract_features
    from medicraft_monai.metrics.fidelity import frechet_distance, precision_recall

    feats = extract_features(extractor, images, progress=False)
    results = check_images(images, progress=False, checker=checker)
    precision, recall = precision_recall(real_feats, feats)
    return {
        "frechet_distance": frechet_distance(real_feats, feats),
        "precision": precision,
        "recall": recall,
        "anatomy_pass_rate": float(summarise(results, labels)["pass_rate"]),
    }


def choose_default(rows: list[dict[str, Any]], ref: dict[str, float]) -> int | None:
    """Fewest DPM-Solver++ steps within DDIM-50's spread on both measures."""
    ok = [
        r["steps"]
        for r in rows
        if r["sampler"] == "dpmpp_2m"
        and r["frechet_distance"] <= ref["fd_mean"] + ref["fd_spread"]
        and r["anatomy_pass_rate"] >= ref["pass_mean"] - ref["pass_spread"]
    ]
    return min(ok) if ok else None


def plot(path: Path, rows, ref, chosen, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, mean, spread, label in (
        (axes[0], "frechet_distance", ref["fd_mean"], ref["fd_spread"], "Frechet distance (lower is better)"),
        (axes[1], "anatomy_pass_rate", ref["pass_mean"], ref["pass_spread"], "anatomy pass rate (higher is better)"),
    ):
        for sampler, style in (("ddim", "o--"), ("dpmpp_2m", "s-")):
            pts = sorted((r["steps"], r[key]) for r in rows if r["sampler"] == sampler)
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                style,
                label="DDIM" if sampler == "ddim" else "DPM-Solver++ 2M",
            )
        ax.axhspan(mean - spread, mean + spread, color="0.85", label="DDIM-50 mean +- spread")
        ax.axhline(mean, color="0.5", lw=0.8)
        if chosen is not None:
            ax.axvline(chosen, color="C2", ls=":", label=f"chosen: {chosen} steps")
        ax.set_xlabel("sampling steps (UNet passes)")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    save_figure(fig, axes[0], path, title)


def save_figure(fig, fd_axis, path: Path, title: str) -> None:
    """Log-scale the Frechet distance axis (a poor few-step setting is 100-1000x worse than the rest), add the
    legend and title, and write the PNG."""
    import matplotlib.pyplot as plt

    fd_axis.set_yscale("log")
    fd_axis.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------------
# the shipped generator: oct_ddpm's weights and its distilled student on the real OCT2017 sample
# ---------------------------------------------------------------------------------------------------------------------
#: sampling variants of the precision check: bundle overrides, and whether the weights are cast to bf16 once
VARIANTS: dict[str, tuple[dict[str, Any], bool]] = {
    "fp32 eager (shipped)": ({}, False),
    "bf16 autocast + channels_last": ({"amp_dtype": "bfloat16", "channels_last": True}, False),
    "fused attention (fp32)": ({"use_flash_attention": True}, False),
    "fused attention + bf16 weights + channels_last": (
        {"use_flash_attention": True, "amp_dtype": "bfloat16", "channels_last": True},
        True,
    ),
}


def oct2017_dir() -> Path:
    import os

    env = os.environ.get("MEDICRAFT_OCT2017")
    return Path(env) if env else REPO.parent / "shared" / "data" / "oct2017"


def shipped_available() -> bool:
    """Whether the shipped oct_ddpm weights, its distilled student and the real OCT2017 sample are all here."""
    models = BUNDLE / "models"
    return (
        (models / "model.pt").is_file()
        and (models / "distilled" / "model.pt").is_file()
        and (oct2017_dir() / "manifest.csv").is_file()
    )


def student_files(student: str | Path | None = None) -> tuple[Path, int]:
    """The student's weights and the step count they were distilled for (their ``diffusion.json``).

    ``student`` is ``--student``: a distilled ``model.pt`` with its ``diffusion.json`` beside it, or the folder of
    both (a ``distill.json`` run's ``distilled_dir``), scored in place of the bundle's student without touching the
    bundle; ``None`` is the bundle's own ``models/distilled/model.pt``.

    Raises:
        SystemExit: a file is missing, or the weights were not distilled (the message names the file).
    """
    path = Path(student) if student is not None else BUNDLE / "models" / "distilled" / "model.pt"
    if path.is_dir():
        path = path / "model.pt"
    settings = path.with_name("diffusion.json")
    for f in (path, settings):
        if not f.is_file():
            raise SystemExit(f"{f}: no such file (a student is a distilled model.pt with its diffusion.json beside it)")
    recorded = json.loads(settings.read_text())
    if recorded.get("sampler") != "distilled" or "num_inference_steps" not in recorded:
        raise SystemExit(
            f"{settings}: not the settings of a distilled student (sampler {recorded.get('sampler')!r}, "
            f"num_inference_steps {recorded.get('num_inference_steps')!r})"
        )
    return path, int(recorded["num_inference_steps"])


def shipped_datalist(args, work: Path) -> Path:
    """The patient-level split the shipped weights were trained on (``medicraft datalist`` defaults)."""
    from medicraft_monai.data.datalist import build_datalist

    if args.datalist:
        return Path(args.datalist)
    path = work / "oct2017_datalist.json"
    if not path.is_file():
        build_datalist(oct2017_dir(), path)
    return path


def shipped_generator(sampler: str, variant: str, student: str | Path | None = None):
    """The shipped generator with ``sampler`` and a precision ``variant``; for ``"distilled"``, the student of
    :func:`student_files` (the bundle's, or ``student``) at the step count it was distilled for."""
    import torch

    from medicraft_monai.synthesis.generator import DiffusionGenerator

    overrides, cast_weights = VARIANTS[variant]
    overrides, ckpt = {"sampler": sampler, **overrides}, None
    if sampler == "distilled":
        ckpt, overrides["distilled_steps"] = student_files(student)
    gen = DiffusionGenerator.from_bundle(BUNDLE, ckpt_path=ckpt, device="cpu", overrides=overrides)
    if cast_weights:
        gen.network.to(torch.bfloat16)
    return gen


def _spread(runs: list[dict[str, float]]) -> dict[str, Any]:
    """Mean, spread (max - min) and the runs of every measure over the seed sets."""
    out: dict[str, Any] = {"seed_sets": len(runs)}
    for key in ("frechet_distance", "precision", "recall", "anatomy_pass_rate"):
        vals = [r[key] for r in runs]
        out[key] = sum(vals) / len(vals)
        out[f"{key}_spread"] = max(vals) - min(vals)
        out[f"{key}_runs"] = vals
    return out


def within(row: dict[str, Any], ref: dict[str, Any]) -> bool:
    """A point's mean Frechet distance and anatomy pass rate within the reference's seed spread."""
    return (
        row["frechet_distance"] <= ref["frechet_distance"] + ref["frechet_distance_spread"]
        and row["anatomy_pass_rate"] >= ref["anatomy_pass_rate"] - ref["anatomy_pass_rate_spread"]
    )


def shipped_main(args, work: Path, start: float) -> dict[str, Any]:
    """Quality against steps of the shipped generator: DDIM, DPM-Solver++ and the distilled student, every point over
    ``--reference-seeds`` seed sets, scored against the real training split with the fixed OCT features."""
    from medicraft_monai.metrics.anatomy import AnatomyChecker, check_images, summarise
    from medicraft_monai.metrics.features import extract_features
    from medicraft_monai.utils import file_sha256

    datalist = shipped_datalist(args, work)
    names = ["CNV", "DME", "DRUSEN", "NORMAL"]
    real, labels = real_images(args, datalist)
    extractor, fe_name = feature_extractor(args, work, real, labels, len(names))
    real_feats = extract_features(extractor, real, progress=False)
    checker = AnatomyChecker.for_spectralis()
    real_pass = float(summarise(check_images(real, progress=False, checker=checker))["pass_rate"])
    points = [("ddim", s) for s in args.steps] + [("dpmpp_2m", s) for s in args.dpm_steps or args.steps]
    points += [("distilled", s) for s in args.distilled_steps]
    rows: list[dict[str, Any]] = []
    for sampler, steps in points:
        gen = shipped_generator(sampler, "fp32 eager (shipped)", args.student)
        runs = []
        for k in args.reference_seeds:
            t0 = time.perf_counter()
            images, lab = sample_set(gen, names, args.per_class, k, steps, args.batch)
            seconds = time.perf_counter() - t0
            runs.append({**score(images, lab, real_feats, extractor, checker), "seconds": seconds})
            _say(f"{sampler} {steps} steps, seed set {k}: {runs[-1]}")
        n_img = args.per_class * len(names)
        rows.append(
            {
                "sampler": sampler,
                "steps": steps,
                **_spread(runs),
                "s_per_image": sum(r["seconds"] for r in runs) / len(runs) / n_img,
                "seconds": sum(r["seconds"] for r in runs),
            }
        )
    ref_sampler, ref_steps = args.reference.split(":")
    ref = next((r for r in rows if r["sampler"] == ref_sampler and r["steps"] == int(ref_steps)), None)
    if ref is None:
        raise SystemExit(f"the reference {args.reference} is not one of the points {points}")
    for r in rows:
        r["within_reference_spread"] = within(r, ref)
        r["speedup_vs_reference"] = ref["s_per_image"] / r["s_per_image"]

    # the precision and attention kernels against fp32 eager on the trained weights, at the student and the reference
    precision_rows = []
    for sampler, steps in [("distilled", s) for s in args.distilled_steps[:1]] + [(ref_sampler, int(ref_steps))]:
        base = next(r for r in rows if r["sampler"] == sampler and r["steps"] == steps)
        for variant in list(VARIANTS)[1:] if args.bf16 else []:
            gen = shipped_generator(sampler, variant, args.student)
            runs = []
            for k in args.reference_seeds:
                images, lab = sample_set(gen, names, args.per_class, k, steps, args.batch)
                runs.append(score(images, lab, real_feats, extractor, checker))
            row = {"sampler": sampler, "steps": steps, "variant": variant, **_spread(runs)}
            row["within_fp32_spread"] = within(row, base)
            precision_rows.append(row)
            _say(
                f"{sampler} {steps} steps, {variant}: FD {row['frechet_distance']:.3f} (fp32 {base['frechet_distance']:.3f})"
            )

    n_img = args.per_class * len(names)
    student_path = student_files(args.student)[0]
    student_sha = file_sha256(student_path)
    print(
        f"\nquality vs steps of the shipped oct_ddpm ({tuple(args.image_size)}, weights sha256 "
        f"{file_sha256(BUNDLE / 'models' / 'model.pt')[:12]}, student "
        f"{student_sha[:12]}): {n_img} images per setting and seed set, "
        f"{len(args.reference_seeds)} seed sets; features: {fe_name}; against {len(real)} real training images "
        f"(their anatomy pass rate: {real_pass:.2f}); mean (spread = max - min over the seed sets)"
    )
    print(
        "| sampler | steps | Frechet distance | precision | recall | anatomy pass rate | within ref. spread | "
        "speed vs ref. |\n| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |"
    )
    label = {"ddim": "DDIM", "dpmpp_2m": "DPM-Solver++ 2M", "distilled": "distilled student"}
    for r in rows:
        mark = " (reference)" if r is ref else ""
        print(
            f"| {label[r['sampler']]}{mark} | {r['steps']} | {r['frechet_distance']:.3f} ({r['frechet_distance_spread']:.3f}) "
            f"| {r['precision']:.3f} ({r['precision_spread']:.3f}) | {r['recall']:.3f} ({r['recall_spread']:.3f}) "
            f"| {r['anatomy_pass_rate']:.3f} ({r['anatomy_pass_rate_spread']:.3f}) "
            f"| {'yes' if r['within_reference_spread'] else 'no'} | {r['speedup_vs_reference']:.2f}x |"
        )
    if precision_rows:
        print("\n| sampler | steps | variant | Frechet distance | anatomy pass rate | within fp32's spread |")
        print("| --- | ---: | --- | ---: | ---: | --- |")
        for r in precision_rows:
            print(
                f"| {label[r['sampler']]} | {r['steps']} | {r['variant']} | {r['frechet_distance']:.3f} "
                f"({r['frechet_distance_spread']:.3f}) | {r['anatomy_pass_rate']:.3f} | "
                f"{'yes' if r['within_fp32_spread'] else 'no'} |"
            )
    result = {
        "model": "shipped",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "student": str(student_path),
        "student_sha256": student_sha,
        "datalist_sha256": file_sha256(datalist),
        "features": fe_name,
        "real_images": len(real),
        "real_anatomy_pass_rate": real_pass,
        "rows": rows,
        "reference": {"sampler": ref_sampler, "steps": int(ref_steps)},
        "precision_variants": precision_rows,
        "seconds": time.perf_counter() - start,
    }
    if args.plot:
        plot_shipped(
            args.plot,
            rows,
            ref,
            f"shipped oct_ddpm on OCT2017, {n_img} images x {len(args.reference_seeds)} seed sets per point",
        )
        print(f"curve: {args.plot}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


def plot_shipped(path: Path, rows, ref, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    styles = {"ddim": ("o--", "DDIM"), "dpmpp_2m": ("s-", "DPM-Solver++ 2M"), "distilled": ("*", "distilled student")}
    for ax, key, name in (
        (axes[0], "frechet_distance", "Frechet distance (lower is better)"),
        (axes[1], "recall", "recall (higher is better)"),
        (axes[2], "anatomy_pass_rate", "anatomy pass rate (higher is better)"),
    ):
        for sampler, (style, label) in styles.items():
            pts = sorted((r["steps"], r[key], r[f"{key}_spread"]) for r in rows if r["sampler"] == sampler)
            if pts:
                ax.errorbar(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    yerr=[p[2] / 2 for p in pts],
                    fmt=style,
                    markersize=12 if sampler == "distilled" else 6,
                    capsize=3,
                    label=label,
                )
        mean, spread = ref[key], ref[f"{key}_spread"]
        ax.axhspan(
            mean - spread,
            mean + spread,
            color="0.85",
            label=f"{styles[ref['sampler']][1]} {ref['steps']}: mean +- spread",
        )
        ax.set_xlabel("sampling steps (UNet passes)")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
    save_figure(fig, axes[0], path, title)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/medicraft_quality"))
    ap.add_argument(
        "--model",
        default="auto",
        choices=["auto", "shipped", "phantom"],
        help="shipped: the shipped oct_ddpm weights and distilled student on the real OCT2017 sample; phantom: a model "
        "trained here on phantom data (or --ckpt); auto (default): shipped when both are here and not --quick",
    )
    ap.add_argument(
        "--distilled-steps",
        type=int,
        nargs="+",
        default=None,
        help="the student's steps (shipped: its diffusion.json, the bundle's or --student's)",
    )
    ap.add_argument(
        "--student",
        type=Path,
        default=None,
        help="shipped: score this distilled model.pt (its diffusion.json beside it; or their folder) in place of the "
        "bundle's student, without touching the bundle",
    )
    ap.add_argument("--reference", default="dpmpp_2m:8", help="shipped: the reference point, sampler:steps")
    ap.add_argument("--ckpt", default=None, help="trained oct_ddpm weights (default: train in --work-dir)")
    ap.add_argument("--datalist", default=None, help="the real (phantom) datalist the model was trained on")
    ap.add_argument("--image-size", type=int, nargs=2, default=None, help="model image size (default 64 128)")
    ap.add_argument("--channels", type=int, nargs="+", default=None, help="UNet channels (default 16 32 32)")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs when training here (default 5)")
    ap.add_argument("--exams", type=int, default=None, help="phantom exams when making data here (default 24)")
    ap.add_argument("--phantom-height", type=int, default=256)
    ap.add_argument("--phantom-width", type=int, default=512)
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument(
        "--prediction-type",
        default="v_prediction",
        choices=["v_prediction", "epsilon", "sample"],
        help="what the UNet predicts (as trained; default v_prediction, the bundles' default)",
    )
    ap.add_argument("--steps", type=int, nargs="+", default=None, help="step counts (default 5 10 15 20 25 50)")
    ap.add_argument("--dpm-steps", type=int, nargs="+", default=None, help="DPM-Solver++ step counts (--steps)")
    ap.add_argument("--per-class", type=int, default=None, help="images per class and setting (default 16)")
    ap.add_argument("--reference-seeds", type=int, nargs="+", default=None, help="seed sets of DDIM-50 (0 1 2)")
    ap.add_argument("--batch", type=int, default=24, help="sampling batch size")
    ap.add_argument("--features", default="auto", help="auto | bundle | densenet")
    ap.add_argument("--fe-epochs", type=int, default=None, help="epochs of the DenseNet feature extractor (8)")
    ap.add_argument("--no-bf16", dest="bf16", action="store_false", help="sample in fp32")
    ap.add_argument("--plot", type=Path, default=None, help="PNG of the curve")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny data, model and step counts")
    args = ap.parse_args(argv)
    q = args.quick
    if args.model == "auto":
        args.model = "shipped" if (not q and args.ckpt is None and shipped_available()) else "phantom"
    if args.model == "shipped":
        shipped = {
            "image_size": [32, 64],
            "steps": [4, 8, 10],
            "dpm_steps": [2, 3, 4, 6, 8, 10],
            "distilled_steps": [student_files(args.student)[1]],
            "per_class": 64,
            "reference_seeds": [0, 1, 2],
            "features": "bundle",
        }
        for k, v in shipped.items():
            if getattr(args, k) in (None, "auto"):
                setattr(args, k, v)
    args.distilled_steps = args.distilled_steps or []
    defaults = {
        "image_size": [16, 32] if q else [64, 128],
        "channels": [8, 16] if q else [16, 32, 32],
        "epochs": 1 if q else 5,
        "exams": 9 if q else 24,
        "steps": [2, 4] if q else [5, 10, 15, 20, 25, 50],
        "per_class": 2 if q else 16,
        "reference_seeds": [0, 1] if q else [0, 1, 2],
        "fe_epochs": 1 if q else 8,
    }
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if q:
        args.phantom_height, args.phantom_width = 64, 128
        args.work_dir = args.work_dir.with_name(args.work_dir.name + "_quick")
    return args


def main(argv=None) -> dict[str, Any]:
    from medicraft_monai.data.phantom import PhantomConfig
    from medicraft_monai.metrics.anatomy import AnatomyChecker, check_images, summarise
    from medicraft_monai.metrics.features import extract_features

    args = parse_args(argv)
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if args.model == "shipped":
        return shipped_main(args, work, start)
    datalist, ckpt, names = prepare_model(args, work)
    real, labels = real_images(args, datalist)
    extractor, fe_name = feature_extractor(args, work, real, labels, len(names))
    real_feats = extract_features(extractor, real, progress=False)
    checker = AnatomyChecker.for_phantom(PhantomConfig(height=args.phantom_height, width=args.phantom_width))
    real_pass = float(summarise(check_images(real, progress=False, checker=checker))["pass_rate"])
    ref_steps = 50 if 50 in args.steps else max(args.steps)
    rows: list[dict[str, Any]] = []
    ref_runs: list[dict[str, float]] = []
    keep: dict[tuple[str, int], Any] = {}
    for sampler in SAMPLERS:
        gen = load_generator(args, ckpt, names, sampler, amp=args.bf16)
        for steps in args.dpm_steps if (sampler == "dpmpp_2m" and args.dpm_steps) else args.steps:
            seed_sets = args.reference_seeds if (sampler == "ddim" and steps == ref_steps) else args.reference_seeds[:1]
            for k in seed_sets:
                t0 = time.perf_counter()
                images, lab = sample_set(gen, names, args.per_class, k, steps, args.batch)
                m = score(images, lab, real_feats, extractor, checker)
                seconds = time.perf_counter() - t0
                _say(f"{sampler} {steps} steps, seed set {k}: {m} ({seconds:.0f} s)")
                if k == args.reference_seeds[0]:
                    rows.append({"sampler": sampler, "steps": steps, **m, "seconds": seconds})
                    keep[sampler, steps] = images
                if sampler == "ddim" and steps == ref_steps:
                    ref_runs.append(m)
    fds = [r["frechet_distance"] for r in ref_runs]
    passes = [r["anatomy_pass_rate"] for r in ref_runs]
    ref = {
        "steps": ref_steps,
        "fd_runs": fds,
        "fd_mean": sum(fds) / len(fds),
        "fd_spread": max(fds) - min(fds),
        "pass_runs": passes,
        "pass_mean": sum(passes) / len(passes),
        "pass_spread": max(passes) - min(passes),
    }
    chosen = choose_default(rows, ref)

    # bf16 + channels_last against fp32 at the chosen step count, same seeds
    precision = None
    at = chosen or max(args.steps)
    if args.bf16 and ("dpmpp_2m", at) in keep:
        gen32 = load_generator(args, ckpt, names, "dpmpp_2m", amp=False)
        fp32, lab = sample_set(gen32, names, args.per_class, args.reference_seeds[0], at, args.batch)
        bf16 = keep["dpmpp_2m", at]
        diff = (fp32 - bf16).abs()
        mse = float((diff**2).mean())
        precision = {
            "steps": at,
            "mean_abs": float(diff.mean()),
            "max_abs": float(diff.max()),
            "psnr_db": 10 * math.log10(1 / max(mse, 1e-12)),
            "fp32": score(fp32, lab, real_feats, extractor, checker),
            "bf16": score(bf16, lab, real_feats, extractor, checker),
        }

    n_img = args.per_class * len(names)
    print(
        f"\nquality vs steps: {n_img} images per setting ({args.per_class} per class), model {tuple(args.image_size)} "
        f"channels {tuple(args.channels)}, {'bf16 + channels_last' if args.bf16 else 'fp32'}; features: {fe_name}; "
        f"{len(real)} real images (anatomy pass rate of the real images: {real_pass:.2f})"
    )
    print("| sampler | steps | Frechet distance | anatomy pass rate | seconds |\n| --- | ---: | ---: | ---: | ---: |")
    for r in sorted(rows, key=lambda r: (r["sampler"], r["steps"])):
        name = "DDIM" if r["sampler"] == "ddim" else "DPM-Solver++ 2M"
        print(
            f"| {name} | {r['steps']} | {r['frechet_distance']:.2f} | {r['anatomy_pass_rate']:.2f} | {r['seconds']:.0f} |"
        )
    print(
        f"DDIM-{ref_steps} over {len(fds)} seed sets: Frechet distance {ref['fd_mean']:.2f} (spread {ref['fd_spread']:.2f}), "
        f"pass rate {ref['pass_mean']:.2f} (spread {ref['pass_spread']:.2f})"
    )
    print(
        f"chosen default: dpmpp_2m with {chosen} steps"
        if chosen
        else f"no DPM-Solver++ step count matched DDIM-{ref_steps}"
    )
    if precision:
        print(
            f"bf16 + channels_last vs fp32 (DPM-Solver++ {at} steps, same seeds): mean |diff| {precision['mean_abs']:.4f}, "
            f"max |diff| {precision['max_abs']:.3f}, PSNR {precision['psnr_db']:.1f} dB; Frechet distance fp32 "
            f"{precision['fp32']['frechet_distance']:.2f} vs bf16 {precision['bf16']['frechet_distance']:.2f}"
        )
    result = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "features": fe_name,
        "real_images": len(real),
        "real_anatomy_pass_rate": real_pass,
        "rows": rows,
        "reference": ref,
        "chosen_steps": chosen,
        "bf16_vs_fp32": precision,
        "seconds": time.perf_counter() - start,
    }
    if args.plot:
        plot(args.plot, rows, ref, chosen, f"oct_ddpm on phantom data, {n_img} images per point; features: {fe_name}")
        print(f"curve: {args.plot}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
