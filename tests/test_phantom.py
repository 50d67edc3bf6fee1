"""The procedural OCT phantom: determinism, anatomy and its ground truth, lesions, defects, data-set writing."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from medicraft_monai.data.keys import OCTKeys
from medicraft_monai.data.phantom import (
    DEFECTS,
    LAYER_BOUNDARIES,
    OCTPhantom,
    PhantomConfig,
    load_phantom_truth,
    write_phantom_dataset,
)

SMALL = PhantomConfig(height=128, width=256)
TINY = PhantomConfig(height=64, width=128, n_planes=4)


@pytest.fixture(scope="module")
def small() -> OCTPhantom:
    return OCTPhantom(SMALL)


@pytest.fixture(scope="module")
def full() -> OCTPhantom:
    return OCTPhantom()


def _line_distance(point: tuple[float, float], angle_deg: float) -> tuple[float, float]:
    """(distance of an en-face point from the scan line through the fovea, its position s along the line)."""
    a = math.radians(angle_deg)
    x, y = point
    return abs(x * math.sin(a) - y * math.cos(a)), x * math.cos(a) + y * math.sin(a)


def _region(truth, top: str, bottom: str, min_rows: float = 2.0) -> np.ndarray:
    """Pixels between two boundaries, in columns where the layer is at least ``min_rows`` thick."""
    h = truth.lesion_mask.shape[0]
    rows = np.arange(h)[:, None]
    a, b = truth.layers[top], truth.layers[bottom]
    ok = np.isfinite(a) & np.isfinite(b) & (b - a >= min_rows)
    return (rows >= np.ceil(a)[None]) & (rows < np.floor(b)[None]) & ok[None]


# ---------------------------------------------------------------------------------------------------- determinism
def test_same_seed_same_pixels_other_seed_other_pixels(small: OCTPhantom) -> None:
    a = small.generate_exam(3, "melanoma", "L")
    np.random.seed(123)  # global numpy state must not matter
    np.random.rand(10)
    b = small.generate_exam(3, "melanoma", "L")
    c = small.generate_exam(4, "melanoma", "L")
    assert a.images.shape == (12, 128, 256) and a.images.dtype == np.float32
    assert 0.0 <= a.images.min() and a.images.max() <= 1.0
    np.testing.assert_array_equal(a.images, b.images)
    for ta, tb in zip(a.truths, b.truths):
        np.testing.assert_array_equal(ta.lesion_mask, tb.lesion_mask)
        np.testing.assert_array_equal(ta.layers["RPE"], tb.layers["RPE"])
    assert np.abs(a.images - c.images).mean() > 0.02
    # one plane alone is the exam's plane
    img, truth = small.generate_bscan(3, "melanoma", 60.0, "L")
    np.testing.assert_array_equal(img, a.images[2])
    np.testing.assert_array_equal(truth.layers["ILM"], a.truths[2].layers["ILM"])


def test_anatomy_independent_of_class_laterality_and_mirrored(small: OCTPhantom) -> None:
    r = small.generate_exam(8, "healthy", "R")
    lft = small.generate_exam(8, "healthy", "L")
    benign = small.generate_exam(8, "benign", "R")
    # the left eye is the mirror image of the right eye: same ONH distance, opposite side
    assert lft.meta["onh_center_xy_mm"][0] == pytest.approx(-r.meta["onh_center_xy_mm"][0])
    assert lft.meta["onh_center_xy_mm"][1] == pytest.approx(r.meta["onh_center_xy_mm"][1])
    # the same seed gives the same eye whatever the class (the lesion aside): the retina above it is unchanged
    np.testing.assert_array_equal(r.truths[3].layers["ILM"], benign.truths[3].layers["ILM"])


# ---------------------------------------------------------------------------------------------------------- fovea
@pytest.mark.parametrize("laterality", ["R", "L"])
def test_exactly_one_fovea_per_plane_at_the_centre(small: OCTPhantom, laterality: str) -> None:
    dx = SMALL.pixel_spacing_mm[1]
    centre = SMALL.width // 2
    for seed, cls in ((0, "healthy"), (1, "healthy"), (2, "benign")):
        exam = small.generate_exam(seed, cls, laterality)
        for t in exam.truths:
            assert t.fovea_columns == [centre] and t.fovea_column == centre
            assert len(t.foveal_depths_mm) == 1 and 0.06 < t.foveal_depths_mm[0] < 0.25
            if cls == "healthy":
                # independently: the deepest ILM point near the centre is the pit
                k = int(1.0 / dx)
                ilm = t.layers["ILM"][centre - k : centre + k + 1]
                assert abs(int(np.argmax(ilm)) - k) * dx <= 0.15
                assert ilm[k] - max(ilm[0], ilm[-1]) > 5  # rows: the pit is well below its rim


# ------------------------------------------------------------------------------------------------------------ ONH
@pytest.mark.parametrize("laterality", ["R", "L"])
def test_onh_only_on_planes_crossing_the_disc_on_the_nasal_side(small: OCTPhantom, laterality: str) -> None:
    dx = SMALL.pixel_spacing_mm[1]
    centre = SMALL.width // 2
    checked = 0
    for seed in (0, 5, 9):
        exam = small.generate_exam(seed, "healthy", laterality)
        xy = exam.meta["onh_center_xy_mm"]
        radius = exam.meta["onh_radius_mm"]
        assert 4.0 <= math.hypot(*xy) <= 4.6 and (xy[0] > 0) == (laterality == "R")
        crossing = []
        for t in exam.truths:
            dist, s0 = _line_distance(xy, t.plane_angle)
            if abs(dist - radius) < 2 * dx:
                continue  # grazing: whether a column centre falls inside is a matter of rounding
            crossing.append(dist < radius)
            assert t.has_onh == (dist < radius), (seed, t.plane_angle)
            if dist < radius:
                half = math.sqrt(radius**2 - dist**2)
                lo, hi = (s0 - half) / dx + centre, (s0 + half) / dx + centre
                assert abs(t.onh_columns[0] - lo) <= 1.0 and abs(t.onh_columns[1] - hi) <= 1.0
                checked += 1
                # inside Bruch's membrane opening only the ILM exists
                inside = slice(t.onh_columns[0], t.onh_columns[1] + 1)
                assert np.isfinite(t.layers["ILM"][inside]).all()
                assert np.isnan(t.layers["RPE"][inside]).all() and np.isnan(t.layers["BM"][inside]).all()
        # with the default geometry only the horizontal line (angles 0 and 180) crosses the disc
        assert crossing == [a in (0.0, 180.0) for a in exam.plane_angles]
        # side: a right eye's ONH is at the right end at angle 0, a left eye's at the right end at angle 180
        at0, at180 = exam.truths[0].onh_columns, exam.truths[6].onh_columns
        if laterality == "R":
            assert at0[0] > centre and at180[1] < centre
        else:
            assert at0[1] < centre and at180[0] > centre
    assert checked == 6


def test_no_rpe_inside_the_disc_in_the_image(full: OCTPhantom) -> None:
    exam = full.generate_exam(2, "healthy", "R")
    t, img = exam.truths[0], exam.images[0]
    c0, c1 = t.onh_columns
    rpe = t.layers["RPE"]
    rpe_band = np.mean([img[int(round(rpe[c])) : int(round(rpe[c])) + 3, c].mean() for c in range(c0 - 60, c0 - 10)])
    # inside the opening, at the level the RPE would have (interpolated across the disc)
    level = np.interp(np.arange(c0, c1 + 1), [c0 - 3, c1 + 3], [t.layers["RPE"][c0 - 3], t.layers["RPE"][c1 + 3]])
    mid = range(c0 + (c1 - c0) // 4, c1 - (c1 - c0) // 4)
    disc_band = np.mean([img[int(round(level[c - c0])) : int(round(level[c - c0])) + 3, c].mean() for c in mid])
    assert disc_band < rpe_band - 0.2


# --------------------------------------------------------------------------------------------------------- layers
def test_layer_boundaries_ordered_outside_the_onh(small: OCTPhantom) -> None:
    for seed, cls, lat in ((0, "healthy", "R"), (1, "benign", "L"), (2, "melanoma", "R"), (3, "melanoma", "L")):
        exam = small.generate_exam(seed, cls, lat)
        for t in exam.truths:
            stack = np.stack([t.layers[n] for n in LAYER_BOUNDARIES])
            outside = np.ones(SMALL.width, dtype=bool)
            if t.onh_columns is not None:
                outside[t.onh_columns[0] : t.onh_columns[1] + 1] = False
            assert np.isfinite(stack[:, outside]).all()
            assert (np.diff(stack[:, outside], axis=0) >= -1e-4).all(), (seed, t.plane_angle)
            assert np.isnan(stack[1:, ~outside]).all()
            assert (stack[0] >= 0).all() and (stack[-1, outside] < SMALL.height).all()


def test_layer_reflectivity_order(full: OCTPhantom) -> None:
    exam = full.generate_exam(4, "healthy", "R")
    means = {name: [] for name in ("RNFL", "INL", "ONL", "RPE", "IPL")}
    for t, img in zip(exam.truths, exam.images):
        means["RNFL"].append(img[_region(t, "ILM", "RNFL_GCL")].mean())
        means["IPL"].append(img[_region(t, "GCL_IPL", "IPL_INL")].mean())
        means["INL"].append(img[_region(t, "IPL_INL", "INL_OPL")].mean())
        means["ONL"].append(img[_region(t, "OPL_ONL", "ELM")].mean())
        means["RPE"].append(img[_region(t, "RPE", "BM", 1.0)].mean())
    m = {k: float(np.mean(v)) for k, v in means.items()}
    assert m["RNFL"] > m["ONL"] + 0.15
    assert m["RPE"] > m["ONL"] + 0.3
    assert m["IPL"] > m["INL"] > m["ONL"] - 0.05
    # a dark, noisy background above the retina
    t = exam.truths[3]
    vitreous = exam.images[3][: int(np.nanmin(t.layers["ILM"])) - 5]
    assert 0.03 < vitreous.mean() < 0.2 and vitreous.std() > 0.02


# -------------------------------------------------------------------------------------------------------- lesions
def test_lesion_masks_follow_the_footprint(small: OCTPhantom) -> None:
    for seed in range(4):
        healthy = small.generate_exam(seed, "healthy")
        assert all(not t.lesion_mask.any() and not t.fluid_mask.any() for t in healthy.truths)
        assert healthy.meta["lesion"] is None
        for cls in ("benign", "melanoma"):
            exam = small.generate_exam(seed, cls, "L" if seed % 2 else "R")
            les = exam.meta["lesion"]
            sizes = [int(t.lesion_mask.sum()) for t in exam.truths]
            assert max(sizes) > 0
            # independently: a plane whose line misses the elliptic footprint shows no lesion
            cx, cy = les["center_xy_mm"]
            th = math.radians(les["orientation_deg"])
            a, b = les["semi_axes_mm"]
            for t, size in zip(exam.truths, sizes):
                s = np.linspace(-6, 6, 4001)
                x, y = s * math.cos(math.radians(t.plane_angle)), s * math.sin(math.radians(t.plane_angle))
                du, dv = x - cx, y - cy
                rho = np.hypot(
                    (du * math.cos(th) + dv * math.sin(th)) / a, (-du * math.sin(th) + dv * math.cos(th)) / b
                )
                if rho.min() > 1.0:
                    assert size == 0, (cls, seed, t.plane_angle)
                if rho.min() < 0.5:
                    assert size > 0, (cls, seed, t.plane_angle)


def test_melanoma_lifts_the_rpe_with_subretinal_fluid(small: OCTPhantom) -> None:
    dark = []
    for seed in (0, 1, 2):
        base = small.generate_exam(seed, "healthy", "R")
        mel = small.generate_exam(seed, "melanoma", "R")
        lifted = 0
        for tb, tm in zip(base.truths, mel.truths):
            cols = tm.lesion_mask.any(axis=0)
            if not cols.any():
                continue
            lift = tb.layers["RPE"][cols] - tm.layers["RPE"][cols]  # rows: up is smaller
            assert (lift > 0).all()
            lifted = max(lifted, float(lift.max()))
            rows = np.arange(SMALL.height)[:, None]
            # the mass lies below Bruch's membrane; the fluid between the photoreceptors and the RPE
            assert not (tm.lesion_mask & (rows < tm.layers["BM"][None] - 0.5)).any()
            fl = tm.fluid_mask
            assert fl.any()
            assert not (fl & ((rows < tm.layers["ISOS"][None]) | (rows >= tm.layers["RPE"][None]))).any()
            # and it is dark in the image (away from the bright photoreceptor and RPE lines)
            core = ndimage.binary_erosion(fl, np.ones((3, 1), dtype=bool))
            if core.any():
                dark.append(mel.images[mel.truths.index(tm)][core].mean())
        assert lifted * SMALL.pixel_spacing_mm[0] > 0.1
    assert dark and np.mean(dark) < 0.25


def test_nevus_is_flat_and_hyperreflective(small: OCTPhantom) -> None:
    for seed in (0, 1, 2):
        base = small.generate_exam(seed, "healthy", "R")
        nev = small.generate_exam(seed, "benign", "R")
        assert nev.lesion_kind == "nevus"
        brighter = []
        for i, (tb, tn) in enumerate(zip(base.truths, nev.truths)):
            np.testing.assert_array_equal(tn.layers["RPE"], tb.layers["RPE"])  # the RPE is not lifted
            assert not tn.fluid_mask.any()
            if tn.lesion_mask.any():
                rows = np.arange(SMALL.height)[:, None]
                assert not (tn.lesion_mask & (rows < tn.layers["BM"][None])).any()
                brighter.append(nev.images[i][tn.lesion_mask].mean() - base.images[i][tn.lesion_mask].mean())
        assert brighter and np.mean(brighter) > 0.05


# -------------------------------------------------------------------------------------------------------- defects
def test_every_defect_changes_its_truth(small: OCTPhantom) -> None:
    seed = 6
    normal = small.generate_exam(seed, "healthy", "R")
    centre = SMALL.width // 2
    dx = SMALL.pixel_spacing_mm[1]
    out = {d: small.generate_exam(seed, "healthy", "R", defect=d) for d in DEFECTS}
    for d, exam in out.items():
        assert exam.defect == d and all(t.defect == d for t in exam.truths)

    for t in out["doubled_fovea"].truths:
        left, right = t.fovea_columns
        assert left < centre < right and left + right == 2 * centre
        ilm = t.layers["ILM"]
        assert ilm[left] > ilm[centre] + 3 and ilm[right] > ilm[centre] + 3
    for t in out["absent_fovea"].truths:
        assert t.fovea_columns == [] and t.fovea_column is None
        k = int(1.0 / dx)
        assert t.layers["ILM"][centre] - t.layers["ILM"][[centre - k, centre + k]].min() < 2
    for t, tn in zip(out["hypoplastic_fovea"].truths, normal.truths):
        assert t.fovea_columns == [centre]
        assert t.foveal_depths_mm[0] < 0.5 * tn.foveal_depths_mm[0]
    assert any(t.has_onh for t in normal.truths)
    for t in out["absent_onh"].truths:
        assert t.onh_columns is None and np.isfinite(t.layers["RPE"]).all()
    corrupted = out["corrupted_image"]
    for t, img, ref in zip(corrupted.truths, corrupted.images, normal.images):
        assert not t.valid_anatomy and t.fovea_columns == [] and t.onh_columns is None
        assert all(np.isnan(v).all() for v in t.layers.values())
        assert abs(np.corrcoef(img.ravel(), ref.ravel())[0, 1]) < 0.3
    assert all(t.valid_anatomy for t in normal.truths)

    ab = out["abnormal_vessel_diameter"]
    normal_max = max((t.vessel_diameters_mm.max() for t in normal.truths if len(t.vessel_columns)), default=0)
    hits = [(t, img) for t, img in zip(ab.truths, ab.images) if t.vessel_abnormal.any()]
    assert hits and not any(t.vessel_abnormal.any() for t in normal.truths)
    for t, img in hits:
        col = float(t.vessel_columns[t.vessel_abnormal][0])
        assert abs(col - centre) * dx < 1.5  # near the fovea
        assert t.vessel_diameters_mm[t.vessel_abnormal][0] >= 1.5 * normal_max
        # its shadow: the outer retina and choroid under it are darker than beside it
        c = int(round(col))
        rows = slice(int(np.nanmin(t.layers["ISOS"])), int(np.nanmax(t.layers["CSI"])))
        under = img[rows, c - 1 : c + 2].mean()
        beside = np.concatenate([img[rows, c - 12 : c - 6], img[rows, c + 7 : c + 13]], axis=1).mean()
        assert under < beside - 0.05


def test_bad_arguments_are_rejected(small: OCTPhantom) -> None:
    with pytest.raises(ValueError, match="unknown class"):
        small.generate_exam(0, "drusen")
    with pytest.raises(ValueError, match="unknown defect"):
        small.generate_exam(0, "healthy", defect="missing_retina")
    with pytest.raises(ValueError, match="laterality"):
        small.generate_exam(0, "healthy", laterality="")
    with pytest.raises(ValueError, match="lesion kind"):
        PhantomConfig(classes={"tumour": "sarcoma"})
    with pytest.raises(ValueError, match="prevalence"):
        PhantomConfig(prevalence={"drusen": 1.0})


# ------------------------------------------------------------------------------------------------------ data sets
def test_write_png_dataset_prevalence_patients_and_truth(tmp_path: Path) -> None:
    prevalence = {"healthy": 6, "benign": 3, "melanoma": 1}
    items = write_phantom_dataset(tmp_path, n_exams=10, prevalence=prevalence, seed=5, config=TINY, progress=False)
    assert len(items) == 10 * TINY.n_planes
    exams = {i[OCTKeys.EXAM_ID]: i for i in items}
    per_class = {c: sum(1 for e in exams.values() if e[OCTKeys.CLASS_NAME] == c) for c in prevalence}
    assert per_class == {"healthy": 6, "benign": 3, "melanoma": 1}
    # patients hold one exam or two (both eyes)
    patients: dict[str, list[str]] = {}
    for e in exams.values():
        patients.setdefault(e[OCTKeys.PATIENT_ID], []).append(e[OCTKeys.LATERALITY])
    assert all(sorted(v) in (["L"], ["R"], ["L", "R"]) for v in patients.values())
    assert len(patients) < 10 or all(len(v) == 1 for v in patients.values())
    labels = {"healthy": 0, "benign": 1, "melanoma": 2}
    for item in items:
        assert item[OCTKeys.LABEL] == labels[item[OCTKeys.CLASS_NAME]]
        assert item["phantom"] is True and item[OCTKeys.SYNTHETIC] is False and item[OCTKeys.FRAME] == 0
        path = tmp_path / item[OCTKeys.IMAGE]
        assert path.parent.name == item[OCTKeys.CLASS_NAME]
        assert (
            path.name == f"{item[OCTKeys.EXAM_ID]}_{item[OCTKeys.LATERALITY]}_{int(item[OCTKeys.PLANE_ANGLE]):03d}.png"
        )
    # pixels: the PNG is the exam regenerated from its recorded seed
    summary = json.loads((tmp_path / "phantom_summary.json").read_text())
    rec = summary["exams"][0]
    exam = OCTPhantom(TINY).generate_exam(rec["seed"], rec["class_name"], rec["laterality"])
    first = [i for i in items if i[OCTKeys.EXAM_ID] == rec["exam_id"]]
    for k, item in enumerate(first):
        np.testing.assert_array_equal(np.array(Image.open(tmp_path / item[OCTKeys.IMAGE])), exam.to_uint8()[k])
    truths = load_phantom_truth(tmp_path / first[0]["truth"])
    assert len(truths) == TINY.n_planes
    for t, ref in zip(truths, exam.truths):
        np.testing.assert_array_equal(t.layers["BM"], ref.layers["BM"])
        np.testing.assert_array_equal(t.lesion_mask, ref.lesion_mask)
        assert t.fovea_columns == ref.fovea_columns and t.onh_columns == ref.onh_columns
        np.testing.assert_allclose(t.vessel_columns, ref.vessel_columns)
    js = json.loads((tmp_path / first[0]["truth"]).with_suffix(".json").read_text())
    assert js["planes"][0]["fovea_columns"] == [TINY.width // 2]
    # the manifest names every file with its patient, exam, angle and eye
    with open(tmp_path / "images" / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(items)
    assert {r["patient_id"] for r in rows} == set(patients)


def test_write_png_dataset_reads_as_a_patient_split_datalist(tmp_path: Path) -> None:
    from medicraft_monai.data.datalist import build_datalist

    write_phantom_dataset(tmp_path, n_exams=8, seed=1, config=TINY, defects={"absent_fovea": 0.25}, progress=False)
    datalist = build_datalist(tmp_path / "images", strict=True, fractions=(0.5, 0.25, 0.25), seed=0)
    items = [i for split in ("training", "validation", "test") for i in datalist[split]]
    assert len(items) == 8 * TINY.n_planes
    assert all(i[OCTKeys.PLANE_ANGLE] is not None and i[OCTKeys.LATERALITY] in ("R", "L") for i in items)
    splits = {s: {i[OCTKeys.PATIENT_ID] for i in datalist[s]} for s in ("training", "validation", "test")}
    assert not (splits["training"] & splits["validation"]) and not (splits["training"] & splits["test"])
    summary = json.loads((tmp_path / "phantom_summary.json").read_text())
    assert summary["defects"] == {"absent_fovea": 2}


def test_write_dicom_dataset_reads_back(tmp_path: Path) -> None:
    from medicraft_monai.data.dicom import read_oct_dicom

    classes = {"control": "healthy", "tumour": "melanoma"}
    items = write_phantom_dataset(
        tmp_path, n_exams=3, classes=classes, fmt="dicom", seed=2, config=PhantomConfig(64, 128, 6), progress=False
    )
    cfg = PhantomConfig(64, 128, 6, classes=classes)
    files = sorted({i[OCTKeys.IMAGE] for i in items})
    assert len(files) == 3 and all(f.endswith(".dcm") for f in files)
    summary = json.loads((tmp_path / "phantom_summary.json").read_text())
    for rec in summary["exams"]:
        exam_items = [i for i in items if i[OCTKeys.EXAM_ID] == rec["exam_id"]]
        assert [i[OCTKeys.FRAME] for i in exam_items] == list(range(6))
        frames, meta = read_oct_dicom(tmp_path / exam_items[0][OCTKeys.IMAGE])
        exam = OCTPhantom(cfg).generate_exam(rec["seed"], rec["class_name"], rec["laterality"])
        np.testing.assert_array_equal(frames, exam.to_uint8())
        np.testing.assert_allclose(meta["plane_angles"], [0, 60, 120, 180, 240, 300], atol=1e-3)
        assert meta["laterality"] == rec["laterality"] and meta["patient_id"] == rec["patient_id"]
        np.testing.assert_allclose(meta["pixel_spacing"], cfg.pixel_spacing_mm, rtol=1e-4)
        assert rec["class_name"] in ("control", "tumour")


def test_a_set_that_does_not_fit_on_the_disk_is_refused_up_front(tmp_path: Path, monkeypatch, capsys) -> None:
    import shutil

    from medicraft_monai.cli import main

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=10_000_000))  # 10 MB free
    out = tmp_path / "big"
    with pytest.raises(SystemExit) as exit_:
        main(["phantom", str(out), "--exams", "100", "--height", "256", "--width", "512"])
    assert exit_.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"medicraft: error: {out}: the phantom needs about 324 MB (1200 images of 256 x 512")
    assert "only 10 MB are free" in line and "--exams" in line
    assert not out.exists()  # nothing created
    # a request that fits goes ahead
    write_phantom_dataset(out, n_exams=1, config=TINY, progress=False)
    assert len(list((out / "images").rglob("*.png"))) == 4


@pytest.mark.parametrize("seed", [0, 4, 7])
def test_min_patients_per_class_puts_a_rare_class_in_every_split(tmp_path: Path, seed: int) -> None:
    """The demo's imbalanced phantom (6:3:1 of 30 exams: 3 melanoma exams) has every class in every split (without
    the option, seeds 4 and 7 pair two melanoma eyes into one patient and leave the test split without one)."""
    from medicraft_monai.data.datalist import build_datalist

    prevalence = {"healthy": 6.0, "benign": 3.0, "melanoma": 1.0}
    write_phantom_dataset(
        tmp_path, n_exams=30, seed=seed, config=TINY, prevalence=prevalence, progress=False, min_patients_per_class=3
    )
    datalist = build_datalist(tmp_path / "images", strict=True, seed=seed, classes=list(prevalence))
    for split in ("training", "validation", "test"):
        assert {i[OCTKeys.LABEL] for i in datalist[split]} == {0, 1, 2}, split


def test_min_patients_per_class_needs_enough_exams(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'melanoma': 2.*give more exams"):
        write_phantom_dataset(
            tmp_path,
            n_exams=24,
            config=TINY,
            prevalence={"healthy": 6.0, "benign": 3.0, "melanoma": 1.0},
            progress=False,
            min_patients_per_class=3,
        )
    assert not any(tmp_path.iterdir())  # refused before anything was written
