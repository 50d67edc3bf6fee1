"""ContextDisorder / ContextDisorderd: deterministic by seed, pixels only moved, T swaps of non-overlapping patches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, CopyItemsd

from medicraft_monai.data import read_bscan
from medicraft_monai.transforms import ContextDisorder, ContextDisorderD, ContextDisorderd, item_seed


def _image(shape=(1, 32, 64), seed=0) -> np.ndarray:
    # distinct values everywhere, so every moved pixel is visible
    return np.random.default_rng(seed).permutation(int(np.prod(shape))).reshape(shape).astype(np.float32)


def _patch_mask(shape, corners, size) -> np.ndarray:
    mask = np.zeros(shape[1:], dtype=bool)
    for r, c in corners:
        mask[r : r + size[0], c : c + size[1]] = True
    return mask


def _undo(img: np.ndarray, swaps, size) -> np.ndarray:
    out = img.copy()
    ph, pw = size
    for (r1, c1), (r2, c2) in reversed(swaps):
        a = out[:, r1 : r1 + ph, c1 : c1 + pw].copy()
        out[:, r1 : r1 + ph, c1 : c1 + pw] = out[:, r2 : r2 + ph, c2 : c2 + pw]
        out[:, r2 : r2 + ph, c2 : c2 + pw] = a
    return out


def test_same_seed_same_result_and_other_seeds_differ() -> None:
    img = _image()
    a = ContextDisorder((4, 6), 8).set_random_state(3)(img)
    b = ContextDisorder((4, 6), 8).set_random_state(3)(img)
    c = ContextDisorder((4, 6), 8).set_random_state(4)(img)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a, img)
    # successive calls draw new swaps; re-seeding replays them
    t = ContextDisorder(4, 5).set_random_state(9)
    first, second = t(img), t(img)
    assert not np.array_equal(first, second)
    t.set_random_state(9)
    np.testing.assert_array_equal(t(img), first)


@pytest.mark.parametrize("size,num_swaps", [((4, 4), 1), ((4, 8), 10), ((8, 3), 25), ((16, 16), 3)])
def test_pixels_are_only_moved_inside_2t_patches_of_the_given_size(size, num_swaps) -> None:
    img = _image((2, 32, 64), seed=1)
    t = ContextDisorder(size, num_swaps).set_random_state(0)
    out = t(img)
    # the intensity distribution is unchanged, channel by channel
    for ch in range(img.shape[0]):
        np.testing.assert_array_equal(np.sort(out[ch].ravel()), np.sort(img[ch].ravel()))
    # exactly T swaps, each of two in-bounds patches of the given size that do not overlap each other
    assert len(t.swaps) == num_swaps
    for (r1, c1), (r2, c2) in t.swaps:
        for r, c in ((r1, c1), (r2, c2)):
            assert 0 <= r <= 32 - size[0] and 0 <= c <= 64 - size[1]
        assert abs(r1 - r2) >= size[0] or abs(c1 - c2) >= size[1], "patches of one swap overlap"
    # every changed pixel lies inside one of the 2T patches
    changed = (out != img).any(axis=0)
    corners = [p for swap in t.swaps for p in swap]
    assert changed.any()
    assert not (changed & ~_patch_mask(img.shape, corners, size)).any()
    # and undoing those swaps in reverse order gives the input back: nothing else happened
    np.testing.assert_array_equal(_undo(out, t.swaps, size), img)
    # every channel moved alike
    np.testing.assert_array_equal((out[0] != img[0]), (out[1] != img[1]))


def test_torch_and_metatensor_inputs_match_numpy_and_the_input_is_not_modified() -> None:
    img = _image()
    keep = img.copy()
    ref = ContextDisorder(4, 6).set_random_state(5)(img)
    out_t = ContextDisorder(4, 6).set_random_state(5)(torch.from_numpy(img))
    out_m = ContextDisorder(4, 6).set_random_state(5)(MetaTensor(torch.from_numpy(img)))
    assert isinstance(out_t, torch.Tensor) and isinstance(out_m, MetaTensor)
    np.testing.assert_array_equal(out_t.numpy(), ref)
    np.testing.assert_array_equal(out_m.numpy(), ref)
    np.testing.assert_array_equal(img, keep)


def test_num_swaps_range_prob_and_bad_inputs() -> None:
    img = _image()
    t = ContextDisorder(4, (2, 5)).set_random_state(0)
    counts = set()
    for _ in range(40):
        t(img)
        counts.add(len(t.swaps))
    assert counts == {2, 3, 4, 5}
    never = ContextDisorder(4, 5, prob=0.0)
    np.testing.assert_array_equal(never(img), img)
    assert never.swaps == []
    # a tight image: only room for two patches side by side, still never overlapping
    tight = ContextDisorder((32, 32), 3).set_random_state(0)
    out = tight(img)
    assert all(abs(a[1] - b[1]) >= 32 for a, b in tight.swaps)
    np.testing.assert_array_equal(np.sort(out.ravel()), np.sort(img.ravel()))
    with pytest.raises(ValueError, match="no room for two non-overlapping"):
        ContextDisorder((20, 40), 1)(img)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        ContextDisorder(4, 1)(img[0])
    with pytest.raises(ValueError, match="patch_size"):
        ContextDisorder(0, 1)
    with pytest.raises(ValueError, match="num_swaps"):
        ContextDisorder(4, (5, 2))


def test_dictionary_version_same_swaps_for_every_key_and_target_untouched() -> None:
    img = _image()
    other = _image(seed=7)
    t = Compose(
        [CopyItemsd(keys="image", names="label"), ContextDisorderd(keys=["image", "mask"], patch_size=4, num_swaps=6)]
    ).set_random_state(11)
    out = t({"image": img, "mask": other})
    np.testing.assert_array_equal(out["label"], img)
    assert not np.array_equal(out["image"], img)
    swaps = t.transforms[1].disorder.swaps
    assert len(swaps) == 6
    np.testing.assert_array_equal(out["image"], _undo_apply(img, swaps))
    np.testing.assert_array_equal(out["mask"], _undo_apply(other, swaps))
    assert ContextDisorderD is ContextDisorderd
    again = Compose(
        [CopyItemsd(keys="image", names="label"), ContextDisorderd(keys=["image", "mask"], patch_size=4, num_swaps=6)]
    ).set_random_state(11)
    np.testing.assert_array_equal(again({"image": img, "mask": other})["image"], out["image"])


def _undo_apply(img: np.ndarray, swaps) -> np.ndarray:
    """Apply ``swaps`` (4x4 patches) to ``img`` the way the transform does."""
    out = img.copy()
    for (r1, c1), (r2, c2) in swaps:
        a = out[:, r1 : r1 + 4, c1 : c1 + 4].copy()
        out[:, r1 : r1 + 4, c1 : c1 + 4] = out[:, r2 : r2 + 4, c2 : c2 + 4]
        out[:, r2 : r2 + 4, c2 : c2 + 4] = a
    return out


def test_fixed_seed_gives_each_image_its_own_corruption_whatever_the_order() -> None:
    a, b = _image(seed=1), _image(seed=2)
    t1 = ContextDisorderd(keys="image", patch_size=4, num_swaps=5, fixed_seed=42)
    t2 = ContextDisorderd(keys="image", patch_size=4, num_swaps=5, fixed_seed=42)
    a1, b1 = t1({"image": a})["image"], t1({"image": b})["image"]
    b2, a2 = t2({"image": b})["image"], t2({"image": a})["image"]
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(b1, b2)
    np.testing.assert_array_equal(t1({"image": a})["image"], a1)  # the same again on the next epoch
    t3 = ContextDisorderd(keys="image", patch_size=4, num_swaps=5, fixed_seed=43)
    assert not np.array_equal(t3({"image": a})["image"], a1)
    assert item_seed(a, 42) == item_seed(torch.from_numpy(a), 42) != item_seed(b, 42)


def test_real_bscan_histogram_is_kept(real_bscan_paths) -> None:
    img = read_bscan(real_bscan_paths[0])[0][None].astype(np.float32)
    t = ContextDisorder((32, 32), 20).set_random_state(0)
    out = t(img)
    np.testing.assert_array_equal(np.sort(out.ravel()), np.sort(img.ravel()))
    assert (out != img).mean() > 0.01
