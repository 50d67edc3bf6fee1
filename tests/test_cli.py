"""The ``medicraft`` console command, run as a user would (a subprocess of the installed entry point)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

MEDICRAFT = Path(sys.executable).with_name("medicraft")


def run_cli(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``medicraft ARGS`` and return the finished process (stdout and stderr captured as text)."""
    proc = subprocess.run([str(MEDICRAFT), *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        pytest.fail(f"medicraft {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_help_lists_the_commands() -> None:
    proc = run_cli("--help")
    out = proc.stdout + proc.stderr  # fire writes help to stderr when not on a terminal
    for command in (
        "phantom",
        "datalist",
        "multiply",
        "evaluate",
        "label_efficiency",
        "demo",
        "info",
        "label",
        "review",
    ):
        assert command in out


def test_help_names_the_samplers_and_the_default_steps_where_they_are_defined() -> None:
    from medicraft_monai.bundles import bundle_path, config_files
    from medicraft_monai.schedulers import SAMPLERS

    multiply = run_cli("multiply", "--help")
    assert f"one of {', '.join(SAMPLERS)} (medicraft_monai.schedulers.SAMPLERS)" in multiply.stdout + multiply.stderr
    generate = run_cli("generate", "--help")
    assert f"one of {', '.join(SAMPLERS)}" in (generate.stdout + generate.stderr).replace("\n        ", " ")
    parser = ConfigParser()
    parser.read_config([str(p) for p in config_files(bundle_path("oct_ddpm"), "inference.json")])
    # the step count is an expression (3 for the distilled student, else 10): the help names its value
    sampler, n_steps = parser.get_parsed_content("sampler"), parser.get_parsed_content("num_inference_steps")
    assert isinstance(n_steps, int) and sampler != "distilled"
    demo = run_cli("demo", "--help")
    steps = f"{sampler} with {n_steps} steps, as the oct_ddpm bundle sets them"
    assert steps in (demo.stdout + demo.stderr).replace("\n        ", " ")


def test_info_prints_versions() -> None:
    out = run_cli("info").stdout
    assert out.startswith("medicraft_monai ")
    assert "monai " in out and "torch " in out


def test_datalist_on_the_real_sample(oct2017_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "oct2017.json"
    out = run_cli("datalist", str(oct2017_dir), "--output", str(output), "--seed", "3").stdout
    datalist = json.loads(output.read_text())
    assert datalist["labels"] == {"0": "CNV", "1": "DME", "2": "DRUSEN", "3": "NORMAL"}
    total = sum(len(datalist[s]) for s in ("training", "validation", "test"))
    assert total == 689
    # the printed table carries the same totals, and the weights line names every class
    assert "689" in out
    assert "class weights: CNV=" in out and "NORMAL=" in out
    patients = {s: {it["patient_id"] for it in datalist[s]} for s in ("training", "validation", "test")}
    assert not patients["training"] & patients["test"]
    assert not patients["training"] & patients["validation"]


def test_datalist_reports_a_bad_file_and_keeps_the_rest(oct2017_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    for label in ("NORMAL", "CNV"):
        (root / label).mkdir(parents=True)
        for src in sorted((oct2017_dir / label).glob("*.jpeg"))[:4]:
            shutil.copy(src, root / label / src.name)
    bad = root / "CNV" / "CNV-999-1.jpeg"
    bad.write_bytes((oct2017_dir / "CNV" / "CNV-1016042-1.jpeg").read_bytes()[:500])  # truncated JPEG
    output = tmp_path / "dl.json"
    proc = run_cli("datalist", str(root), "--output", str(output))
    datalist = json.loads(output.read_text())
    assert sum(len(datalist[s]) for s in ("training", "validation", "test")) == 8
    assert [Path(e["image"]).name for e in datalist["excluded"]] == ["CNV-999-1.jpeg"]
    assert "CNV-999-1.jpeg" in proc.stderr + proc.stdout

    strict = run_cli("datalist", str(root), "--output", str(tmp_path / "strict.json"), "--strict", check=False)
    # one line naming the file and the problem (not a header and a list)
    lines = strict.stderr.strip().splitlines()
    assert strict.returncode == 2 and len(lines) == 1, strict.stderr
    assert lines[0].startswith(f"medicraft: error: {bad.resolve()}: cannot decode jpeg image (OSError: image file is")
    assert lines[0].endswith(f"(building datalist from {root})")
    assert not (tmp_path / "strict.json").exists()

    # several bad files: the first, and the names of the others, still in one line
    (root / "NORMAL" / "NORMAL-999-1.jpeg").write_bytes(b"")
    (root / "NORMAL" / "NORMAL-999-2.jpeg").write_bytes(b"")
    strict = run_cli("datalist", str(root), "--output", str(tmp_path / "strict.json"), "--strict", check=False)
    lines = strict.stderr.strip().splitlines()
    assert strict.returncode == 2 and len(lines) == 1, strict.stderr
    assert lines[0].startswith("medicraft: error: ") and "CNV-999-1.jpeg: cannot decode" in lines[0]
    assert "and 2 more problem(s): NORMAL-999-1.jpeg, NORMAL-999-2.jpeg" in lines[0]
    assert not (tmp_path / "strict.json").exists()


def test_datalist_on_an_empty_folder_fails_clearly(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = run_cli("datalist", str(tmp_path / "empty"), "--output", str(tmp_path / "x.json"), check=False)
    assert proc.returncode != 0
    assert "empty" in proc.stderr and "no image files" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_phantom_command_writes_png_and_dicom_data_sets_with_datalists(tmp_path: Path) -> None:
    import pydicom

    png = tmp_path / "png"
    out = run_cli("phantom", str(png), "--exams", "6", "--height", "64", "--width", "128", "--seed", "5").stdout
    datalist = json.loads((png / "datalist.json").read_text())
    assert datalist["labels"] == {"0": "healthy", "1": "benign", "2": "melanoma"}
    items = [it for s in ("training", "validation", "test") for it in datalist[s]]
    assert len(items) == 6 * 12 and len(list((png / "images").rglob("*.png"))) == 72
    assert {it["plane_angle"] for it in items} == {30.0 * k for k in range(12)}
    assert "total" in out and str(72) in out
    assert len(list((png / "ground_truth").glob("*.npz"))) == 6

    dcm = tmp_path / "dcm"
    run_cli("phantom", str(dcm), "--exams", "3", "--fmt", "dicom", "--height", "64", "--width", "128")
    files = sorted((dcm / "images").rglob("*.dcm"))
    assert len(files) == 3
    ds = pydicom.dcmread(files[0])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.77.1.5.4" and int(ds.NumberOfFrames) == 12
    datalist = json.loads((dcm / "datalist.json").read_text())
    assert sum(len(datalist[s]) for s in ("training", "validation", "test")) == 36

    # a second run into the same folder would mix two data sets: refused, unless --overwrite
    again = run_cli("phantom", str(png), "--exams", "2", check=False)
    assert again.returncode == 2 and "already holds a phantom data set" in again.stderr
    run_cli("phantom", str(png), "--exams", "2", "--height", "64", "--width", "128", "--overwrite")
    assert len(list((png / "images").rglob("*.png"))) == 24


def test_multiply_command_refuses_a_missing_checkpoint_before_any_work(tmp_path: Path) -> None:
    phantom = tmp_path / "ph"
    run_cli("phantom", str(phantom), "--exams", "3", "--height", "64", "--width", "128")
    out = tmp_path / "mult"
    proc = run_cli(
        "multiply", str(phantom / "datalist.json"), str(out), "--ckpt_path", str(tmp_path / "none.pt"), check=False
    )
    assert proc.returncode == 2
    assert "none.pt: checkpoint not found" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()  # no output folder (or job file) before the inputs are checked


def test_label_app_dir_and_the_accepted_only_datalists_of_multiply(tmp_path: Path) -> None:
    from medicraft_monai.cli import _write_accepted
    from medicraft_monai.data.datalist import load_datalist, write_datalist
    from medicraft_monai.data.phantom import make_phantom_dataset

    app = Path(run_cli("label", "app-dir").stdout.strip())
    assert (app / "main.py").is_file() and (app / "lib").is_dir()

    make_phantom_dataset(tmp_path / "real", exams=3, height=32, width=64, progress=False)
    real = load_datalist(tmp_path / "real" / "datalist.json")
    # three images standing in for multiply's synthetic output; the experts accepted only the second
    fake = [dict(it, synthetic=True, patient_id=f"synthetic-{k}") for k, it in enumerate(real["training"][:3])]
    synth = write_datalist(
        tmp_path / "datalist_synthetic.json", {**real, "training": fake, "validation": [], "test": []}
    )
    combined = write_datalist(tmp_path / "datalist_real_synthetic.json", {**real, "training": real["training"] + fake})
    reviews = tmp_path / "reviews.json"
    verdicts = ["reject", "accept", "reject"]
    reviews.write_text(
        json.dumps(
            {f"img{k}": {"sha256": it["sha256"], "decision": d} for k, (it, d) in enumerate(zip(fake, verdicts))}
        )
    )
    _write_accepted({"datalist_synthetic": str(synth), "datalist_combined": str(combined)}, str(reviews))

    kept = load_datalist(tmp_path / "datalist_synthetic_accepted.json", check=False)
    assert [it["sha256"] for it in kept["training"]] == [fake[1]["sha256"]]
    both = load_datalist(tmp_path / "datalist_real_synthetic_accepted.json", check=False)
    assert sum(bool(it.get("synthetic")) for it in both["training"]) == 1
    assert sum(not it.get("synthetic") for it in both["training"]) == len(real["training"])  # real images all stay


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _error_line(proc: subprocess.CompletedProcess) -> str:
    """The one-line message of a refused command (after any progress output), with no traceback."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stderr.strip().splitlines()[-1]


def test_phantom_overwrite_with_a_bad_argument_changes_nothing_and_names_the_option(tmp_path: Path) -> None:
    out = tmp_path / "ph"
    run_cli("phantom", str(out), "--exams", "2", "--height", "32", "--width", "64")
    before = _snapshot(out)
    cases = [
        (["--exams", "0"], "medicraft: error: --exams must be >= 1, got 0"),
        (["--fmt", "tiff"], "medicraft: error: --fmt must be 'png' or 'dicom', got 'tiff'"),
        (["--planes", "0"], "medicraft: error: --planes must be >= 1, got 0"),
        (["--fractions", "0.5,0.1,0.1"], "medicraft: error: --fractions must be three non-negative numbers"),
        (["--defect", "no_such_defect"], "medicraft: error: unknown defect 'no_such_defect'"),
    ]
    for args, message in cases:
        proc = run_cli("phantom", str(out), *args, "--overwrite", check=False)
        assert _error_line(proc).startswith(message), proc.stderr
        assert "n_exams" not in proc.stderr and "n_planes" not in proc.stderr
        assert _snapshot(out) == before, args  # the data set and its datalist are untouched


def test_phantom_never_deletes_files_it_did_not_write(tmp_path: Path) -> None:
    out = tmp_path / "ph"
    run_cli("phantom", str(out), "--exams", "2", "--height", "32", "--width", "64")
    mine = out / "images" / "healthy" / "mine.png"
    mine.write_bytes(b"the user's own scan")
    (out / "ground_truth" / "notes.txt").write_text("user notes")
    before = _snapshot(out)
    proc = run_cli("phantom", str(out), "--exams", "3", "--height", "32", "--width", "64", "--overwrite", check=False)
    line = _error_line(proc)
    assert f"{out / 'images'} holds 1 file(s) the phantom did not write: healthy/mine.png" in line
    assert f"{out / 'ground_truth'} holds 1 file(s) the phantom did not write: notes.txt" in line
    assert _snapshot(out) == before

    # a folder of the user's images without a phantom record is refused, with or without --overwrite
    user = tmp_path / "user"
    (user / "images" / "NORMAL").mkdir(parents=True)
    (user / "images" / "NORMAL" / "scan.png").write_bytes(b"user scan")
    proc = run_cli("phantom", str(user), "--exams", "2", "--overwrite", check=False)
    line = _error_line(proc)
    assert "holds 1 file(s) the phantom did not write: NORMAL/scan.png" in line and "no phantom record" in line
    assert _snapshot(user) == {"images/NORMAL/scan.png": b"user scan"}

    # once the user's files are moved away, --overwrite replaces exactly the phantom's files
    mine.unlink()
    (out / "ground_truth" / "notes.txt").unlink()
    run_cli("phantom", str(out), "--exams", "3", "--height", "32", "--width", "64", "--overwrite")
    assert len(list((out / "images").rglob("*.png"))) == 36
    assert len(list((out / "ground_truth").glob("*.npz"))) == 3


def test_phantom_refuses_a_set_an_older_version_wrote_and_says_why_and_what_to_do(tmp_path: Path) -> None:
    out = tmp_path / "old"
    run_cli("phantom", str(out), "--exams", "2", "--height", "32", "--width", "64")
    (out / "phantom_files.json").unlink()  # as versions before the record wrote it
    before = _snapshot(out)
    for overwrite, why in (("--overwrite", "(--overwrite deletes nothing)"), ("--seed", "(and a new set would mix")):
        args = [overwrite] if overwrite == "--overwrite" else [overwrite, "0"]
        line = _error_line(run_cli("phantom", str(out), "--exams", "3", *args, check=False))
        assert line.startswith(f"medicraft: error: {out}: holds a phantom data set written by an older medicraft_monai")
        assert (
            f"without the record phantom_files.json of the files it wrote, so the phantom cannot tell its files from yours {why}"
            in line
        )
        delete = " ".join(str(out / t) for t in ("datalist.json", "ground_truth", "images", "phantom_summary.json"))
        assert f"delete it yourself (rm -r {delete}) and run again" in line and "(nothing was changed)" in line
        assert _snapshot(out) == before

    # done as it says, the folder takes a new set
    for name in ("datalist.json", "phantom_summary.json"):
        (out / name).unlink()
    for name in ("ground_truth", "images"):
        shutil.rmtree(out / name)
    run_cli("phantom", str(out), "--exams", "3", "--height", "32", "--width", "64")
    assert len(list((out / "ground_truth").glob("*.npz"))) == 3


def test_phantom_never_replaces_a_datalist_it_did_not_write(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "datalist.json").write_text('{"my": "datalist"}')
    for extra in ([], ["--overwrite"]):
        line = _error_line(run_cli("phantom", str(out), "--exams", "2", *extra, check=False))
        assert line == (
            f"medicraft: error: {out} holds 1 file(s) the phantom did not write: datalist.json (there is no phantom "
            "record phantom_files.json); move them away or choose an empty folder (nothing was changed)"
        )
        assert _snapshot(out) == {"datalist.json": b'{"my": "datalist"}'}


def test_a_mistyped_command_line_is_refused_before_anything_runs_naming_the_closest_option(tmp_path: Path) -> None:
    out = tmp_path / "ph"
    run_cli("phantom", str(out), "--exams", "2", "--height", "32", "--width", "64")
    before = _snapshot(out)
    usage = "(medicraft phantom --help lists the options)"
    cases = [
        # fire ran these with the defaults (here: deleting the set to write 12 exams) before "Could not consume arg"
        (["phantom", str(out), "--exam", "3", "--overwrite"], f"phantom: unknown option --exam; did you mean --exams? {usage}"),
        (["phantom", str(out), "--n_exams=3", "--overwrite"], f"phantom: unknown option --n_exams; did you mean --exams? {usage}"),
        (["phantom", str(out), "--overwrite", "--zzz"], "phantom: unknown option --zzz; the choices are --output_dir, --exams, "),
        (["datalist", str(out / "images"), "--stirct"], "datalist: unknown option --stirct; did you mean --strict?"),
        (["multiply", "a.json", "b", "--ckpt", "m.pt"], "multiply: unknown option --ckpt; did you mean --ckpt_path?"),
        (["phantm", str(out)], "unknown command 'phantm'; did you mean phantom? (medicraft --help lists them)"),
        (["review", "exprt", "s", "o"], "review: unknown command 'exprt'; did you mean export? (medicraft review --help lists them)"),
        (["phantom"], "phantom: missing OUTPUT_DIR (usage: medicraft phantom OUTPUT_DIR [--option VALUE ...])"),
        (["review", "export", "s"], "review export: missing OUTPUT_DIR (usage: medicraft review export STUDIES OUTPUT_DIR"),
        (["info", "a.png", "b.png"], "info: unexpected argument 'b.png' (usage: medicraft info [--option VALUE ...])"),
        # fire passed True: a datalist seeded with 1, a traceback for --output, one phantom exam
        (["datalist", str(out / "images"), "--seed"], "datalist: --seed needs a value (--seed VALUE, or --seed=VALUE)"),
        (["datalist", str(out / "images"), "--output", "--strict"], "datalist: --output needs a value"),
        (["phantom", str(out), "-e", "--overwrite"], "phantom: --exams needs a value"),
    ]  # fmt: skip
    for args, message in cases:
        proc = run_cli(*args, check=False, cwd=tmp_path)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr  # one line, nothing else
        assert _error_line(proc).startswith(f"medicraft: error: {message}"), (args, proc.stderr)
        assert "Could not consume" not in proc.stderr and not proc.stdout
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ph"]


@pytest.mark.parametrize(
    "args",
    [
        ["phantom", "OUT", "-e", "2", "--fmt=png", "--nooverwrite"],
        ["phantom", "--output_dir", "OUT", "--seed", "-1", "--overwrite"],
        ["datalist", "SRC", "--check-images", "false", "--strict", "--output=x.json"],
        ["evaluate", "R", "S", "--noutility", "--noanatomy", "--seeds", "0,1"],
        ["bundle", "export", "--from", "oct_ddpm", "--ckpt_path", "m.pt", "--output_dir", "o", "--channels", "[8]"],
        ["review", "export", "S", "O", "--rule", "majority"],
        ["label", "app-dir"],
        ["zoo", "list", "--descending", "--as_json", "--task", "generation"],
        ["generate", "oct_ldm", "out", "--class_name", "CNV,DME", "--num_samples", "2", "--noprogress"],
        ["phantom", "--help"],
        ["multiply", "-h"],
        ["review"],
        [],
        ["info"],
    ],
)
def test_a_valid_command_line_passes_the_check_as_fire_reads_it(args: list[str]) -> None:
    from medicraft_monai.cli import MedicraftCLI, _check_command_line

    _check_command_line(MedicraftCLI(), args)  # raises ValueError on what it refuses


def test_phantom_interrupted_exits_130_without_partial_files_and_a_rerun_resumes(tmp_path: Path) -> None:
    import hashlib
    import signal
    import time

    out = tmp_path / "ph"
    args = [str(MEDICRAFT), "phantom", str(out), "--exams", "30", "--height", "64", "--width", "128", "--seed", "1"]
    # Ctrl-C as at a terminal: a test runner's worker may ignore SIGINT, and a child inherits an ignored signal (then
    # Python installs no KeyboardInterrupt handler), so the child starts with the default disposition
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    record = out / "phantom_files.json"
    deadline = time.time() + 120
    while not record.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("medicraft: interrupted; no partial file was left")
    assert not (out / "datalist.json").exists()  # no datalist of a set that is not complete
    files = json.loads(record.read_text())["files"]
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"phantom_files.json"}
    assert on_disk == set(files)  # no file left under a final (or temporary) name that the record does not vouch for
    for rel, digest in files.items():
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == digest
    kept = _snapshot(out / "images")

    again = run_cli(*args[1:])
    assert "exams were already complete" in again.stdout
    assert len(list((out / "images").rglob("*.png"))) == 360
    after = _snapshot(out / "images")
    assert all(after[rel] == data for rel, data in kept.items())  # the finished exams were kept, not redone
    # the resumed set is the set an uninterrupted run writes
    fresh = tmp_path / "fresh"
    run_cli("phantom", str(fresh), *args[4:])
    assert _snapshot(fresh / "images") == after


def test_info_shows_what_the_reader_sees(oct2017_dir: Path, tmp_path: Path) -> None:
    from medicraft_monai.data.phantom import make_phantom_dataset

    make_phantom_dataset(tmp_path / "dcm", exams=1, fmt="dicom", height=32, width=64, progress=False)
    dcm = next((tmp_path / "dcm" / "images").rglob("*.dcm"))
    out = run_cli("info", str(dcm)).stdout
    assert f"file: {dcm}" in out and "format: dicom" in out
    assert "frames: 12" in out and "size: 32 x 64 (rows x columns)" in out and "bit depth: 8 (uint8)" in out
    assert f"laterality: {dcm.stem[-1]}" in out
    assert "plane angles: 0, 30, 60, 90, 120, 150, 180, 210, 240, 270, 300, 330" in out
    assert "SOP class: 1.2.840.10008.5.1.4.1.1.77.1.5.4 (Ophthalmic Tomography Image Storage)" in out

    jpeg = oct2017_dir / "NORMAL" / "NORMAL-1001666-1.jpeg"
    out = run_cli("info", str(jpeg)).stdout
    assert "format: jpeg" in out and "frames: 1" in out and "bit depth: 8 (uint8)" in out
    assert f"file size: {jpeg.stat().st_size} bytes" in out and "laterality: unknown" in out

    bad = tmp_path / "cut.jpeg"
    bad.write_bytes(jpeg.read_bytes()[:300])
    line = _error_line(run_cli("info", str(bad), check=False))
    assert line.startswith(f"medicraft: error: {bad}: ")
    assert bad.read_bytes() == jpeg.read_bytes()[:300]


def test_multiply_and_evaluate_make_no_output_folder_before_their_inputs_are_checked(tmp_path: Path) -> None:
    from medicraft_monai.data.datalist import load_datalist, write_datalist
    from medicraft_monai.data.phantom import make_phantom_dataset

    make_phantom_dataset(tmp_path / "real", exams=6, height=32, width=64, fractions=(0.4, 0.2, 0.4), progress=False)
    real = tmp_path / "real" / "datalist.json"
    before = _snapshot(tmp_path)
    out = tmp_path / "out" / "nested"
    cases = [
        (["--bundle_root", str(tmp_path / "no_bundle")], "no_bundle"),
        (["--target", '{"no_such_class": 3}'], "no_such_class"),
        (["--batch_size", "0"], "--batch_size must be a positive integer"),
    ]
    for args, message in cases:
        line = _error_line(run_cli("multiply", str(real), str(out), *args, check=False))
        assert message in line, line
        assert not (tmp_path / "out").exists(), args
    assert _snapshot(tmp_path) == before

    items = load_datalist(real)
    fake = [dict(it, synthetic=True, patient_id=f"synthetic-{k}") for k, it in enumerate(items["training"][:3])]
    synth = write_datalist(tmp_path / "synthetic.json", {**items, "training": fake, "validation": [], "test": []})
    before = _snapshot(tmp_path)
    cases = [
        (["--feature_extractor", str(tmp_path / "none.ts")], "none.ts"),
        (["--anatomy_profile", "retina"], "--anatomy_profile must be one of ('phantom', 'spectralis'), got 'retina'"),
        (["--config", str(real.parent / "images" / "manifest.csv")], "not a JSON file of evaluation settings"),
    ]
    for args, message in cases:
        line = _error_line(run_cli("evaluate", str(real), str(synth), "--output_dir", str(out), *args, check=False))
        assert message in line, line
        assert not (tmp_path / "out").exists(), args
    assert _snapshot(tmp_path) == before
