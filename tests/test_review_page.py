"""The review page in a real browser against a real MONAI Label server: review, undo, errors, blinded reading, export.

One ``monailabel start_server`` (``.venv-label``) runs for this module on 127.0.0.1 with the real ``oct_ddpm`` and
``oct_classifier`` bundles at tiny sizes (random weights), real OCT2017 B-scans in its studies folder (with their
class in the image info, as reference images) and other real B-scans as the blinded reading's held-out images
(``--conf turing_datalist``). Headless Chromium from Debian (``scripts/setup_browser.sh``, which ``make test`` runs)
is driven with Playwright; the page is used with the keyboard only where a clinician would use it. Then the
datastore, ``labels/review/*.json`` and ``medicraft review export``'s report must hold exactly what was clicked.

Screenshots are written to a temporary folder; with ``MEDICRAFT_UPDATE_SCREENSHOTS=1`` the server runs the shipped
generator and classifier instead (their real weights) and the screenshots are copied to
``docs/images/label_review_page*.png`` (the pictures of ``docs/label.md``).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from _label_server import (
    CLASSES,
    CLASSIFIER_BUNDLE,
    GENERATOR_BUNDLE,
    REPO,
    TINY_CLASSIFIER,
    TINY_GENERATOR,
    LabelServer,
    compact_json,
    copy_real_images,
    make_weights,
)
from PIL import Image

from medicraft_monai.label.review import bscan_png
from medicraft_monai.label.turing import TURING_ANSWERS, binomial_ci
from medicraft_monai.networks import bundle_parser

CHROMIUM = Path(os.environ.get("MEDICRAFT_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = ("label_review_page.png", "label_review_page_verdict.png", "label_review_page_progress.png",
               "label_review_page_blinded.png")  # fmt: skip
REVIEWER = "Dr. A. Example"
SHOWN_BYTES = """async (selector) => {
    const response = await fetch(document.querySelector(selector).src);
    return Array.from(new Uint8Array(await response.arrayBuffer()));
}"""  # the bytes of the image the page shows (a blob: URL)
TIMEOUT_MS = 120_000
UPDATE_SCREENSHOTS = os.environ.get("MEDICRAFT_UPDATE_SCREENSHOTS") == "1"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, real_bscan_paths: list[Path]) -> dict:
    root = tmp_path_factory.mktemp("review_page")
    studies = root / "studies"
    in_store = [p for i, p in enumerate(real_bscan_paths) if i % 6 in (0, 1)]  # 2 per class: reference images
    copy_real_images(in_store, studies)
    train = [p for i, p in enumerate(real_bscan_paths) if i % 6 in (2, 3)]
    held_out = [p for i, p in enumerate(real_bscan_paths) if i % 6 in (4, 5)]  # the blinded reading's real images

    def items(paths: list[Path]) -> list[dict]:
        return [{"image": str(p), "label": CLASSES.index(p.parent.name), "class_name": p.parent.name,
                 "patient_id": f"patient-{p.stem}"} for p in paths]  # fmt: skip

    datalist = root / "datalist.json"
    datalist.write_text(json.dumps({"labels": dict(enumerate(CLASSES)), "training": items(train), "validation": [],
                                    "test": items(held_out)}))  # fmt: skip
    conf = {"generator_bundle": str(GENERATOR_BUNDLE), "classifier_bundle": str(CLASSIFIER_BUNDLE)}
    if not UPDATE_SCREENSHOTS:  # tiny networks with random weights; the pictures for the docs use the shipped ones
        conf.update(
            generator_ckpt=str(make_weights(GENERATOR_BUNDLE, TINY_GENERATOR, root / "weights" / "generator.pt")),
            generator_overrides=compact_json(TINY_GENERATOR),
            classifier_ckpt=str(make_weights(CLASSIFIER_BUNDLE, TINY_CLASSIFIER, root / "weights" / "classifier.pt")),
            classifier_overrides=compact_json(TINY_CLASSIFIER),
        )
    conf.update({
        "real_datalist": str(datalist),
        "turing_datalist": str(datalist),
        "max_count": "8",
        "qa": "false",  # scored on demand below (POST /scoring/qa), so the page shows both cases
    })  # fmt: skip
    return {"root": root, "studies": studies, "in_store": in_store, "held_out": held_out, "conf": conf}


@pytest.fixture(scope="module")
def server(setup: dict):
    srv = LabelServer(setup["studies"], setup["conf"], setup["root"] / "server.log").start()
    for p in setup["in_store"]:  # real reference images carry their class
        r = srv.put(
            "/datastore/image/info", params={"image": p.stem}, data={"info": json.dumps({"class_name": p.parent.name})}
        )
        assert r.status_code == 200, r.text
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: run `bash scripts/setup_browser.sh` (or `make browser-setup`) first")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: run `bash scripts/setup_env.sh` (the dev extra installs it)")

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("screenshots")
    yield folder
    if UPDATE_SCREENSHOTS:
        for name in SCREENSHOTS:
            if (folder / name).is_file():
                shutil.copyfile(folder / name, REPO / "docs" / "images" / name)


class Recorder:
    """Answers of the server to the page, kept for the checks (next images, blinded-reading trials)."""

    def __init__(self, page) -> None:
        self.samples: list[dict] = []
        self.trials: list[dict] = []
        self.texts: list[str] = []
        self.references: list[str] = []
        page.on("response", self._on)

    def _on(self, response) -> None:
        url = response.url
        if "/activelearning/review" in url and response.ok:
            self.samples.append(response.json())
        elif "/review/api/turing/next" in url and response.ok:
            self.trials.append(response.json())
            self.texts.append(response.text())
        elif "/review/api/references" in url:
            self.references.append(url)
        elif "/review/api/turing/" in url:
            self.texts.append(response.text())


def open_page(browser, server: LabelServer, name: str | None):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    recorder = Recorder(page)
    page.goto(f"{server.url}/review/")
    page.wait_for_selector("body[data-ready='true']")
    if name is not None:
        page.fill("#reviewer", name)
        page.press("#reviewer", "Enter")
    return context, page, recorder


def latest_sample(page, rec: Recorder, old: tuple, timeout_s: float = 60) -> str:
    """The id of the image the server served the page last, once it is none of ``old``."""
    deadline = time.time() + timeout_s
    while not (rec.samples and rec.samples[-1].get("id") not in old):
        assert time.time() < deadline, f"no new image served after {old}"
        page.wait_for_timeout(50)  # lets Playwright deliver the page's responses to the recorder
    return rec.samples[-1]["id"]


def image_info(server: LabelServer, image_id: str) -> dict:
    r = server.get("/datastore/image/info", params={"image": image_id})
    assert r.status_code == 200, r.text
    return r.json()


def withdraw(server: LabelServer, image: str, reviewer: str):
    """The review page's undo: ``DELETE /review/api/verdict``."""
    return requests.delete(
        f"{server.url}/review/api/verdict", params={"image": image, "reviewer": reviewer}, timeout=60
    )


def wait_state(page, selector: str, state: str) -> None:
    page.wait_for_selector(f"{selector}[data-state='{state}']")


def error_text(page) -> str:
    page.wait_for_selector("#error:not([hidden])")
    return page.inner_text("#error")


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)


# ------------------------------------------------------------------------------------------------------ the scenario
def test_review_page_in_a_browser(server: LabelServer, setup: dict, browser, shots: Path):
    context, page, rec = open_page(browser, server, REVIEWER)
    assert page.title().startswith("medicraft review")
    page.wait_for_selector("text=No unreviewed synthetic image is left")

    # --- synthesize with the form: 3 DME, then 2 CNV
    for cls, count in (("DME", 3), ("CNV", 2)):
        page.select_option("#synth-class", cls)
        page.fill("#synth-count", str(count))
        page.click("#synth-submit")
        page.wait_for_selector(f"#synth-result[data-count='{count}']:has-text('{cls}')")
    wait_state(page, "#candidate", "judging")
    store = server.get("/datastore/", params={"output": "all"}).json()["objects"]
    synthetic = sorted(k for k in store if k.startswith("synthetic_"))
    assert len(synthetic) == 5 and sum("_DME_" in k for k in synthetic) == 3

    # blinded (default): neither class, seed, model nor same-class references before the verdict
    assert page.is_hidden("#candidate-meta") and page.is_hidden("#references-box")
    assert "blinded" in page.inner_text("#candidate-label")
    assert page.get_attribute("#candidate", "data-image") is None
    assert page.get_attribute("#candidate-img", "src").startswith("blob:")
    assert rec.references == [], "blinded review asked for same-class references before the verdict"
    page.screenshot(path=str(shots / SCREENSHOTS[0]))

    verdicts: dict[str, dict] = {}
    # --- image 1: zoom, accept
    first = latest_sample(page, rec, ())
    page.keyboard.press("z")
    assert page.get_attribute("#zoom-box", "data-zoom") == "2"
    page.keyboard.press("a")
    page.keyboard.press("Enter")
    wait_state(page, "#candidate", "judged")
    verdicts[first] = {"verdict": "accept", "anomalies": [], "comment": ""}
    info = image_info(server, first)
    assert "qa" not in info
    assert page.inner_text("#checks").strip() == "not scored yet"
    meta = page.inner_text("#candidate-meta")  # revealed after the verdict
    assert info["class_name"] in meta and f"seed {info['provenance']['seed']}" in meta
    assert page.get_attribute("#candidate", "data-image") == first
    assert page.locator("#references img").count() == 2  # the two real B-scans of that class in the studies folder
    assert len(rec.references) == 1 and f"class={info['class_name']}" in rec.references[0]
    page.keyboard.press("n")
    page.wait_for_function("document.querySelector('#candidate').dataset.state === 'judging'")

    # --- image 2: scored by the automated checks first; reject with two tags and a comment
    second = latest_sample(page, rec, (first,))
    r = server.post("/scoring/qa", params={"run_sync": "true"}, json={"images": [second]})
    assert r.status_code == 200, r.text
    for key in ("r", "1", "3", "c"):
        page.keyboard.press(key)
    page.keyboard.type("second pit temporal")
    page.keyboard.press("Enter")  # in the comment: submits
    wait_state(page, "#candidate", "judged")
    verdicts[second] = {"verdict": "reject", "anomalies": ["doubled_fovea", "hypoplastic_fovea"],
                        "comment": "second pit temporal"}  # fmt: skip
    qa = image_info(server, second)["qa"]
    checks = page.inner_text("#checks")
    assert ("all checks passed" if qa["passed"] else "at least one check failed") in checks
    if qa.get("classifier"):
        assert qa["classifier"]["predicted"] in page.inner_text("#checks tr[data-check='classifier']")
    if qa.get("nearest_real"):
        assert f"{qa['nearest_real']['distance']:.4f}" in page.inner_text("#checks tr[data-check='nearest real image']")
    assert "doubled_fovea, hypoplastic_fovea" in page.inner_text("#after-verdict")
    page.screenshot(path=str(shots / SCREENSHOTS[1]), full_page=True)
    page.keyboard.press("n")
    page.wait_for_function("document.querySelector('#candidate').dataset.state === 'judging'")

    # --- image 3: "other" without a comment is refused (the server's 422 on the page), fixed, undone, judged again
    third = latest_sample(page, rec, (first, second))
    for key in ("r", "7", "Enter"):
        page.keyboard.press(key)
    assert "the tag 'other' needs a comment" in error_text(page) and "422" in error_text(page)
    assert page.get_attribute("#candidate", "data-state") == "judging"
    page.keyboard.press("c")
    page.keyboard.type("blurred layers")
    page.keyboard.press("Enter")
    wait_state(page, "#candidate", "judged")
    assert page.is_hidden("#error")
    label_file = setup["studies"] / "labels" / "review" / f"{third}.json"
    assert json.loads(label_file.read_text())["reviews"][0]["anomalies"] == ["other"]
    page.keyboard.press("u")  # undo: the verdict is withdrawn and the image is judged again
    page.wait_for_selector("text=Verdict withdrawn")
    assert page.get_attribute("#candidate", "data-state") == "judging"
    info = image_info(server, third)
    assert info["review_status"] == "unreviewed" and not info.get("reviews") and not label_file.exists()
    page.keyboard.press("a")
    page.keyboard.press("Enter")
    wait_state(page, "#candidate", "judged")
    verdicts[third] = {"verdict": "accept", "anomalies": [], "comment": ""}
    page.keyboard.press("n")
    page.wait_for_function("document.querySelector('#candidate').dataset.state === 'judging'")

    # --- N before a verdict skips the image: another one is served, the skipped one stays unreviewed
    skipped = latest_sample(page, rec, (first, second, third))  # blinded: the page does not show the id yet
    page.keyboard.press("n")
    latest_sample(page, rec, (first, second, third, skipped))
    page.wait_for_function("document.querySelector('#candidate').dataset.state === 'judging'")
    assert image_info(server, skipped)["review_status"] == "unreviewed"

    # --- a verdict without a reviewer's name: the server's 422 is shown, nothing is stored
    fourth = rec.samples[-1]["id"]
    page.fill("#reviewer", "")
    page.keyboard.press("Escape")
    page.keyboard.press("a")
    page.keyboard.press("Enter")
    assert "reviewer's name is missing" in error_text(page)
    assert not image_info(server, fourth).get("reviews")
    page.fill("#reviewer", REVIEWER)
    page.keyboard.press("Escape")
    assert page.evaluate("localStorage.getItem('medicraft.review.reviewer')") == REVIEWER

    # --- the datastore holds exactly the three verdicts
    for image_id, want in verdicts.items():
        info = image_info(server, image_id)
        (got,) = info["reviews"]
        assert {k: got[k] for k in want} == want and got["reviewer"] == REVIEWER
        assert info["review_status"] == ("accepted" if want["verdict"] == "accept" else "rejected")
        stored = json.loads((setup["studies"] / "labels" / "review" / f"{image_id}.json").read_text())
        assert stored["reviews"] == info["reviews"]
    assert sorted(p.stem for p in (setup["studies"] / "labels" / "review").glob("*.json")) == sorted(verdicts)

    # --- progress panel: per class what was clicked
    classes = {i: image_info(server, i)["class_name"] for i in synthetic}
    page.wait_for_selector("#progress[data-reviewed='3']")
    for cls in CLASSES:
        mine = [i for i in verdicts if classes[i] == cls]
        acc = sum(verdicts[i]["verdict"] == "accept" for i in mine)
        total = sum(c == cls for c in classes.values())
        cells = page.locator(f"#progress-classes tr[data-class='{cls}'] td").all_inner_texts()
        rate = "n/a" if not mine else f"{100 * acc / len(mine):.1f}%"
        assert cells == [cls, str(total - len(mine)), str(len(mine)), str(acc), rate]
    assert page.locator("#progress-tags tr[data-tag='doubled_fovea'] td").all_inner_texts() == [
        "doubled_fovea", "1", "0", "0.0%"]  # fmt: skip
    page.locator("#progress").screenshot(path=str(shots / SCREENSHOTS[2]))

    # --- blinded reading: 6 trials, answered with the keyboard
    page.keyboard.press("t")
    wait_state(page, "#trial", "ready")
    answers, shown = [], []
    for i in range(6):
        answer = "real" if i % 2 == 0 else "synthetic"
        shown.append(bytes(page.evaluate(SHOWN_BYTES, "#trial-img")))
        page.keyboard.press(answer[0])
        if i < 3:
            page.keyboard.press("1")  # the first class offered
        if i == 0:
            page.screenshot(path=str(shots / SCREENSHOTS[3]))
        page.keyboard.press("Enter")
        page.wait_for_selector(f"#trial-count[data-count='{i + 1}']")
        wait_state(page, "#trial", "ready")
        answers.append((answer, rec.trials[i]["classes"][0] if i < 3 else None))

    # which image each trial showed, found from its pixels alone (not from the server's records)
    size = TINY_GENERATOR["image_size"]
    train = bundle_parser(GENERATOR_BUNDLE, config_file="train.json")  # real images framed as its training data
    framing = (train.get_parsed_content("crop_height"), train.get_parsed_content("resize_mode"))
    candidates = [("real", p.parent.name, pixels(bscan_png(p, size, *framing))) for p in setup["held_out"]]
    for image_id in synthetic:
        candidates.append(
            ("synthetic", classes[image_id], pixels(bscan_png(image_info(server, image_id)["path"], size)))
        )
    truths = []
    for png in shown:
        assert png[:8] == b"\x89PNG\r\n\x1a\n", png[:200]
        diffs = [float(np.abs(pixels(png) - c[2]).mean()) for c in candidates]
        best = int(np.argmin(diffs))
        assert diffs[best] < 1.0, f"a trial image matches no candidate (closest mean difference {diffs[best]})"
        truths.append(candidates[best][:2])
    correct = sum(a == t[0] for (a, _), t in zip(answers, truths))
    class_correct = sum(c == t[1] for (_, c), t in zip(answers, truths) if c is not None)

    # the browser never learnt which file a trial was: opaque tokens only
    secrets_ = [p.stem for p in setup["held_out"]] + [f"patient-{p.stem}" for p in setup["held_out"]]
    for trial in rec.trials:
        assert set(trial) == {"token", "classes", "image"}
        assert not any(s in trial["token"] for s in (*secrets_, "real", "synthetic"))
    for text in rec.texts:
        assert not any(s in text for s in secrets_)

    # --- the answers file and the export report what was clicked
    stored = json.loads((setup["studies"] / TURING_ANSWERS).read_text())["trials"]
    assert [(r["answer"], r["class_answer"]) for r in stored] == answers
    assert [(r["truth"], r["true_class"]) for r in stored] == truths
    out = setup["root"] / "export"
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "medicraft"), "review", "export", str(setup["studies"]), str(out),
         "--anatomy=False"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"blinded reading: {correct}/6 right" in proc.stdout
    report = json.loads((out / "review_report.json").read_text())
    s = report["summary"]
    assert (s["reviewed"], s["accepted"], s["rejected"]) == (3, 2, 1)
    assert s["per_reviewer"] == {REVIEWER: {"reviewed": 3, "accepted": 2, "acceptance_rate": round(2 / 3, 4)}}
    assert s["per_anomaly"]["hypoplastic_fovea"]["images"] == 1 and s["per_anomaly"]["other"]["images"] == 0
    reviewed = {im["image"]: im["reviews"] for im in report["images"] if im["reviews"]}
    assert {k: [{f: r[f] for f in ("verdict", "anomalies", "comment")} for r in v] for k, v in reviewed.items()} == {
        k: [v] for k, v in verdicts.items()
    }
    t = report["turing"]
    assert (t["trials"], t["correct"]) == (6, correct)
    assert t["ci95"] == binomial_ci(correct, 6)
    assert t["per_reader"][REVIEWER]["trials"] == 6
    assert t["class_accuracy"] == {"trials": 3, "correct": class_correct,
                                   "accuracy": round(class_correct / 3, 4), "ci95": binomial_ci(class_correct, 3)}  # fmt: skip
    assert sum(g["trials"] for g in t["per_class"].values()) == 6
    assert t["real_trials"] == sum(tr[0] == "real" for tr in truths)
    md = (out / "review_report.md").read_text()
    assert "Blinded reading" in md and "50%" in md
    datalist = json.loads((out / "accepted_datalist.json").read_text())
    assert len(datalist["training"]) == 2
    exported = (out / "review_report.json").read_text() + md + json.dumps(datalist)
    exported += (setup["studies"] / TURING_ANSWERS).read_text()
    assert not any(s in exported for s in secrets_), "a real held-out image is named outside the server"
    context.close()


def test_two_reviewers_never_get_the_same_image(server: LabelServer, browser):
    r = server.infer("synthesize", "new", {"class": "NORMAL", "count": 2, "seed": 500})
    assert r.status_code == 200, r.text
    opened, ids = [], []
    for name in ("Dr B", "Dr C"):
        context, page, _ = open_page(browser, server, None)
        page.select_option("#class-filter", "NORMAL")  # no request yet: no reviewer
        page.fill("#reviewer", name)
        with page.expect_response(lambda resp: "/activelearning/review" in resp.url) as answer:
            page.press("#reviewer", "Enter")
        ids.append(answer.value.json()["id"])
        wait_state(page, "#candidate", "judging")
        opened.append((context, page))
    assert ids[0] != ids[1] and all(i.startswith("synthetic_NORMAL_") for i in ids), ids
    page = opened[0][1]
    page.reload()
    page.wait_for_selector("body[data-ready='true']")
    assert page.input_value("#reviewer") == "Dr B"  # remembered in the browser
    for context, _ in opened:
        context.close()


# --------------------------------------------------------------------------------------- undo over HTTP (no browser)
def test_withdraw_a_verdict_keeps_the_other_reviewers(server: LabelServer, setup: dict):
    r = server.infer("synthesize", "new", {"class": "DRUSEN", "count": 1, "seed": 900})
    assert r.status_code == 200, r.text
    image = r.json()["image"]
    label = setup["studies"] / "labels" / "review" / f"{image}.json"
    for name, verdict in (("Dr X", "reject"), ("Dr Y", "accept")):
        assert server.submit_review(image, {"verdict": verdict, "reviewer": name}).status_code == 200

    r = withdraw(server, image, "  Dr   X ")  # the name as the server normalises it
    assert r.status_code == 200, r.text
    assert r.json()["withdrawn"]["verdict"] == "reject" and r.json()["review_status"] == "accepted"
    info = image_info(server, image)
    assert [v["reviewer"] for v in info["reviews"]] == ["Dr Y"] and info["review_status"] == "accepted"
    assert [v["reviewer"] for v in json.loads(label.read_text())["reviews"]] == ["Dr Y"]

    assert withdraw(server, image, "Dr X").status_code == 404  # nothing left to withdraw
    assert withdraw(server, image, " ").status_code == 422
    assert withdraw(server, "no_such_image", "Dr Y").status_code == 404
    assert withdraw(server, "../etc", "Dr Y").status_code == 400

    r = withdraw(server, image, "Dr Y")
    assert r.status_code == 200 and r.json()["review_status"] == "unreviewed"
    info = image_info(server, image)
    assert info["review_status"] == "unreviewed" and not info.get("reviews") and not label.exists()
    assert server.next_sample("review", {"client_id": "Dr Z", "class": "DRUSEN"}).json()["id"] == image
