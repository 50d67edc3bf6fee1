"""Context disordering for self-supervised context restoration (Chen et al., Medical Image Analysis 58:101539, 2019).

:class:`ContextDisorder` breaks an image's spatial context without changing its intensity distribution: ``T`` times
it picks two random, non-overlapping patches of a given size and swaps them. An encoder-decoder trained to undo
this (see :mod:`medicraft_monai.ssl`) must learn what an OCT B-scan looks like: the order of the retinal layers,
the fovea, the choroid. Pixels are only moved, never changed, so the sorted pixel values (the histogram) of the
output equal those of the input, and every changed pixel lies inside one of the ``2 T`` patches drawn.

The patches of one swap never overlap; patches of different swaps may (as in the paper). Every channel is
swapped alike. The draws come from the transform's own random state (``set_random_state``), so the same seed gives
the same result; :class:`ContextDisorderd` can also seed each item from its own pixels (``fixed_seed``), which
gives the same corruption of an image whatever the order, epoch or worker (for validation and inference).
"""

from __future__ import annotations

import zlib
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import ensure_tuple_rep

__all__ = [
    "ContextDisorder",
    "ContextDisorderD",
    "ContextDisorderDict",
    "ContextDisorderd",
    "item_seed",
]

Swap = tuple[tuple[int, int], tuple[int, int]]
"""One swap: the (row, column) top-left corners of its two patches."""


def _overlap(a: tuple[int, int], b: tuple[int, int], size: tuple[int, int]) -> bool:
    return abs(a[0] - b[0]) < size[0] and abs(a[1] - b[1]) < size[1]


def item_seed(img: Any, seed: int) -> int:
    """A seed derived from ``seed`` and the pixel bytes of ``img`` (the same image always gives the same seed)."""
    arr = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    crc = zlib.crc32(np.ascontiguousarray(arr, dtype=np.float32).tobytes())
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, crc]).generate_state(1)[0])


class ContextDisorder(RandomizableTransform):
    """Swap ``num_swaps`` random pairs of non-overlapping ``patch_size`` patches of a (C, H, W) image.

    Args:
        patch_size: patch (height, width) in pixels, or one int for square patches.
        num_swaps: ``T``, the number of swaps (an int, or an inclusive ``(low, high)`` range drawn per call).
        prob: probability of corrupting the image at all.
        max_tries: tries to place the second patch of a swap next to the first before the first is redrawn.

    Attributes:
        swaps: the swaps of the last call (a list of :data:`Swap`), empty when nothing was done.

    Raises:
        ValueError: (on call) an image too small for two non-overlapping patches.
    """

    def __init__(
        self,
        patch_size: int | Sequence[int] = 8,
        num_swaps: int | Sequence[int] = 10,
        prob: float = 1.0,
        max_tries: int = 100,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        size = tuple(int(s) for s in ensure_tuple_rep(patch_size, 2))
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"patch_size must be positive (height, width), got {patch_size}")
        swaps = (int(num_swaps), int(num_swaps)) if np.isscalar(num_swaps) else tuple(int(v) for v in num_swaps)  # type: ignore[arg-type]
        if len(swaps) != 2 or not 0 <= swaps[0] <= swaps[1]:
            raise ValueError(f"num_swaps must be >= 0 (or a (low, high) range), got {num_swaps}")
        self.patch_size: tuple[int, int] = (size[0], size[1])
        self.num_swaps_range: tuple[int, int] = (swaps[0], swaps[1])
        self.max_tries = int(max_tries)
        self.swaps: list[Swap] = []

    def _check_shape(self, shape: Sequence[int]) -> tuple[int, int]:
        if len(shape) != 3:
            raise ValueError(f"ContextDisorder expects a (C, H, W) image, got shape {tuple(shape)}")
        h, w = int(shape[1]), int(shape[2])
        ph, pw = self.patch_size
        if ph > h or pw > w or (2 * ph > h and 2 * pw > w):
            raise ValueError(
                f"ContextDisorder: an image of {h}x{w} pixels has no room for two non-overlapping {ph}x{pw} patches; "
                "use a smaller patch_size"
            )
        return h, w

    def randomize(self, img: Any) -> None:  # type: ignore[override]
        """Decide whether to corrupt ``img`` and draw the swaps (patch corners) for its shape."""
        super().randomize(None)
        self.swaps = []
        if not self._do_transform:
            return
        h, w = self._check_shape(img.shape)
        ph, pw = self.patch_size
        lo, hi = self.num_swaps_range
        n = int(self.R.randint(lo, hi + 1)) if hi > lo else lo
        for _ in range(n):
            while True:
                a = (int(self.R.randint(0, h - ph + 1)), int(self.R.randint(0, w - pw + 1)))
                for _ in range(self.max_tries):
                    b = (int(self.R.randint(0, h - ph + 1)), int(self.R.randint(0, w - pw + 1)))
                    if not _overlap(a, b, self.patch_size):
                        self.swaps.append((a, b))
                        break
                else:
                    continue  # no room next to this first patch: draw another one
                break

    def __call__(self, img: Any, randomize: bool = True) -> Any:
        """Corrupt ``img`` (numpy array or tensor, (C, H, W)); ``randomize=False`` reuses the last draw."""
        if randomize:
            self.randomize(img)
        if not self._do_transform or not self.swaps:
            return img
        self._check_shape(img.shape)
        out = img.clone() if isinstance(img, torch.Tensor) else np.array(img, copy=True)
        ph, pw = self.patch_size
        for (r1, c1), (r2, c2) in self.swaps:
            first = out[:, r1 : r1 + ph, c1 : c1 + pw]
            p1 = first.clone() if isinstance(first, torch.Tensor) else first.copy()
            out[:, r1 : r1 + ph, c1 : c1 + pw] = out[:, r2 : r2 + ph, c2 : c2 + pw]
            out[:, r2 : r2 + ph, c2 : c2 + pw] = p1
        return out


class ContextDisorderd(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`ContextDisorder` (one draw per item, the same swaps for every key).

    Args:
        keys: keys of the images to corrupt (typically the network input; copy the original to the target key
            first, for example with :class:`monai.transforms.CopyItemsd`).
        patch_size, num_swaps, prob, max_tries: see :class:`ContextDisorder`.
        fixed_seed: when given, every item is corrupted with a seed derived from this value and its first key's
            pixels (:func:`item_seed`), so an image always gets the same corruption (held-out evaluation,
            inference); ``None``: draws from the transform's random state.
        allow_missing_keys: do not fail on items without a key.
    """

    def __init__(
        self,
        keys: KeysCollection,
        patch_size: int | Sequence[int] = 8,
        num_swaps: int | Sequence[int] = 10,
        prob: float = 1.0,
        max_tries: int = 100,
        fixed_seed: int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.disorder = ContextDisorder(patch_size, num_swaps, 1.0, max_tries)
        self.fixed_seed = None if fixed_seed is None else int(fixed_seed)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> ContextDisorderd:
        super().set_random_state(seed, state)
        self.disorder.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        first = self.first_key(d)
        if first == ():
            return d
        if self.fixed_seed is not None:
            seed = item_seed(d[first], self.fixed_seed)
            self.set_random_state(seed)
        self.randomize(None)
        if not self._do_transform:
            return d
        self.disorder.randomize(d[first])
        for key in self.key_iterator(d):
            d[key] = self.disorder(d[key], randomize=False)
        return d


ContextDisorderD = ContextDisorderDict = ContextDisorderd
