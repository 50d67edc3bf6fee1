"""Small patient-level datalists cut from the real OCT2017 sample, for tests that train on a few B-scans."""

from __future__ import annotations

from pathlib import Path

from medicraft_monai.data import build_datalist, write_datalist


def small_oct2017_datalist(oct2017_dir: Path, path: Path, training: int, validation: int, test: int) -> Path:
    """The first ``training``/``validation``/``test`` B-scans per class of each split of ``build_datalist``'s
    patient-level split of the sample, written to ``path``."""
    full = build_datalist(oct2017_dir, check_images=False)
    n_classes = len(full["labels"])

    def pick(split: str, n: int) -> list[dict]:
        return [it for c in range(n_classes) for it in [i for i in full[split] if i["label"] == c][:n]]

    small = {k: v for k, v in full.items() if k not in ("training", "validation", "test")}
    small.update(
        training=pick("training", training), validation=pick("validation", validation), test=pick("test", test)
    )
    return write_datalist(path, small)


def generator_output(
    image: str | Path,
    path: Path,
    size: tuple[int, int] = (64, 128),
    crop_height: int = 256,
    resize_mode: str = "fit",
) -> Path:
    """A real B-scan as a generator of ``size`` trained on it would write it: cropped around the retina
    (``crop_height`` rows), resized (``resize_mode``), saved as an 8-bit PNG at ``path``; a stand-in for a synthetic
    image (a perfect copy of a training image, when ``image`` is one)."""
    import numpy as np
    from PIL import Image

    from medicraft_monai.metrics.images import load_images

    x = load_images([str(image)], size, crop_height=crop_height, progress=False, resize_mode=resize_mode)[0][0, 0]
    x = x.numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(x * 255).astype(np.uint8)).save(path)
    return path
