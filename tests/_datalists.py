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
