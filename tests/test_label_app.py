"""The MONAI Label app against a real server: synthesize, classify, review, export and fine-tune over HTTP.

One ``monailabel start_server`` (in ``.venv-label``, created by ``scripts/setup_label_env.sh`` when missing) runs on
127.0.0.1 on a free port for this module, with the real ``oct_ddpm`` and ``oct_classifier`` bundles at tiny network
sizes (random weights) and real OCT2017 B-scans in its studies folder; it is stopped by its process group id at
the end. Requests are sent the way ``MONAILabelClient`` sends them (multipart ``params``, labels as files).
Fine-tuning runs the generator bundle's ``configs/finetune.json`` from the weights in use (their checksum recorded
in the new ``diffusion.json``).
"""

from __future__ import annotations

import ast
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
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

from medicraft_monai.data import load_datalist, read_bscan
from medicraft_monai.data.phantom import DEFECTS
from medicraft_monai.label import (
    ANOMALY_TAGS,
    ReviewError,
    app_dir,
    decide,
    export_reviews,
    filter_accepted,
    load_reviews,
)
from medicraft_monai.label.finetune import finetune_command
from medicraft_monai.label.review import validate_verdict
from medicraft_monai.utils import file_sha256

PROVENANCE_KEYS = {"bundle", "model_sha256", "class_name", "seed", "steps", "guidance_scale", "created", "sampler"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, real_bscan_paths: list[Path]) -> dict:
    root = tmp_path_factory.mktemp("label")
    studies = root / "studies"
    in_store = [p for i, p in enumerate(real_bscan_paths) if i % 6 in (0, 1)]  # 2 per class in the datastore
    real_ids = copy_real_images(in_store, studies)
    train = [p for i, p in enumerate(real_bscan_paths) if i % 6 in (2, 3)]
    val = [p for i, p in enumerate(real_bscan_paths) if i % 6 == 4]

    def items(paths: list[Path]) -> list[dict]:
        return [
            {"image": str(p), "label": CLASSES.index(p.parent.name), "class_name": p.parent.name,
             "patient_id": p.stem}
            for p in paths
        ]  # fmt: skip

    real_datalist = root / "real_datalist.json"
    real_datalist.write_text(
        json.dumps({"labels": dict(enumerate(CLASSES)), "training": items(train), "validation": items(val), "test": []})
    )
    gen_ckpt = make_weights(GENERATOR_BUNDLE, TINY_GENERATOR, root / "weights" / "generator.pt")
    cls_ckpt = make_weights(CLASSIFIER_BUNDLE, TINY_CLASSIFIER, root / "weights" / "classifier.pt")
    conf = {
        "generator_bundle": str(GENERATOR_BUNDLE),
        "generator_ckpt": str(gen_ckpt),
        "generator_overrides": compact_json(TINY_GENERATOR),
        "classifier_bundle": str(CLASSIFIER_BUNDLE),
        "classifier_ckpt": str(cls_ckpt),
        "classifier_overrides": compact_json(TINY_CLASSIFIER),
        "real_datalist": str(real_datalist),
        "max_count": "8",
    }
    return {"root": root, "studies": studies, "real_ids": real_ids, "gen_ckpt": gen_ckpt, "conf": conf}


@pytest.fixture(scope="module")
def server(setup: dict):
    srv = LabelServer(setup["studies"], setup["conf"], setup["root"] / "server.log").start()
    yield srv
    srv.stop()
    assert srv.proc.poll() is not None, "the server process is still running after stop()"


def synthesize(server: LabelServer, **params) -> dict:
    r = server.infer("synthesize", "new", params)
    assert r.status_code == 200, r.text
    return r.json()


def image_info(server: LabelServer, image_id: str) -> dict:
    r = server.get("/datastore/image/info", params={"image": image_id})
    assert r.status_code == 200, r.text
    return r.json()


# ------------------------------------------------------------------------------------------------ without a server
def test_verdict_validation_and_decision_rules():
    ok = validate_verdict({"verdict": " Reject ", "anomalies": ["other", "doubled_fovea"], "comment": "two pits",
                           "reviewer": "  Dr.  A  "})  # fmt: skip
    assert ok["verdict"] == "reject" and ok["reviewer"] == "Dr. A"
    assert ok["anomalies"] == ["doubled_fovea", "other"]  # vocabulary order, duplicates removed
    assert ok["time"] and ok["received"]
    assert set(DEFECTS) < set(ANOMALY_TAGS) and ANOMALY_TAGS[-1] == "other"
    bad = [
        ({"verdict": "accept"}, "reviewer"),
        ({"verdict": "accept", "reviewer": " "}, "reviewer"),
        ({"verdict": "maybe", "reviewer": "x"}, "verdict"),
        ({"verdict": "reject", "reviewer": "x", "anomalies": ["bent_retina"]}, "unknown anomaly"),
        ({"verdict": "reject", "reviewer": "x", "anomalies": "absent_fovea"}, "list"),
        ({"verdict": "reject", "reviewer": "x", "anomalies": ["other"]}, "comment"),
        ({"verdict": "reject", "reviewer": "x", "score": 3}, "unknown field"),
        ({"verdict": "reject", "reviewer": "x", "time": "yesterday"}, "ISO 8601"),
        (["accept"], "JSON object"),
    ]
    for payload, words in bad:
        with pytest.raises(ReviewError, match=words):
            validate_verdict(payload, "img")
    votes = [{"verdict": "accept"}, {"verdict": "accept"}, {"verdict": "reject"}]
    assert [decide(votes, r) for r in ("unanimous", "majority", "any")] == ["reject", "accept", "accept"]
    assert decide([], "unanimous") is None
    assert (app_dir() / "main.py").is_file() and (app_dir() / "lib").is_dir()


def test_finetune_command_runs_the_bundles_finetune_route(tmp_path: Path):
    parent, out = tmp_path / "weights" / "model.pt", tmp_path / "run" / "models"
    cmd = finetune_command(GENERATOR_BUNDLE, parent, out, {"max_epochs": 2, "max_minutes": 0.5, "datalist": "d.json"})
    assert cmd[1:4] == ["-m", "monai.bundle", "run"]
    configs = [Path(c) for c in ast.literal_eval(cmd[cmd.index("--config_file") + 1])]
    assert [c.name for c in configs] == ["common.json", "train.json", "finetune.json"] and configs[0].is_file()
    value = {k[2:]: v for k, v in zip(cmd[4::2], cmd[5::2])}
    assert value["parent_ckpt_path"] == str(parent) and value["ckpt_dir"] == str(out)
    assert value["max_epochs"] == "2" and value["max_minutes"] == "0.5" and value["datalist"] == "d.json"


# ---------------------------------------------------------------------------------------------------- the server
def test_info_lists_tasks_strategy_trainer_and_vocabulary(server: LabelServer):
    info = server.get("/info/").json()
    assert info["models"]["synthesize"]["type"] == "others"
    assert info["models"]["synthesize"]["labels"] == CLASSES
    assert info["models"]["classify"]["type"] == "classification"
    assert "review" in info["strategies"] and "finetune" in info["trainers"]
    assert info["review"]["anomaly_tags"] == list(ANOMALY_TAGS)
    assert info["datastore"]["total"] == 8  # the real images of the studies folder


def test_synthesize_registers_unreviewed_images_with_provenance(server: LabelServer, setup: dict):
    r = server.infer("synthesize", "new", {"class": "DME", "count": 2, "seed": 11, "steps": 2}, output="image")
    assert r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n", r.text[:300]
    res = synthesize(server, **{"class": "DME", "count": 2, "seed": 11, "steps": 2})
    assert len(res["images"]) == 2 and res["seeds"] == [11, 12]
    store = server.get("/datastore/", params={"output": "all"}).json()["objects"]
    assert sum(k.startswith("synthetic_DME_s1") for k in store) == 2, "the same request twice must not duplicate"
    for image_id, seed in zip(res["images"], (11, 12)):
        info = image_info(server, image_id)
        assert info["synthetic"] is True and info["review_status"] == "unreviewed" and info["class_name"] == "DME"
        prov = info["provenance"]
        assert PROVENANCE_KEYS <= set(prov)
        assert prov["seed"] == seed and prov["steps"] == 2 and prov["bundle"] == "oct_ddpm"
        assert prov["model_sha256"] == file_sha256(setup["gen_ckpt"])
        path = Path(info["path"])
        assert path.parent == setup["studies"].resolve() and file_sha256(path) == info["sha256"]
        img, meta = read_bscan(path)
        assert img.shape[-2:] == (32, 64) and float(np.std(img)) > 0
        assert meta["synthetic"] is True  # provenance inside the PNG as well
    a, b = (read_bscan(image_info(server, i)["path"])[0] for i in res["images"])
    assert not np.array_equal(a, b), "different seeds must give different images"


def test_eight_concurrent_synthesize_requests_all_succeed(server: LabelServer):
    results: dict[int, object] = {}

    def call(k: int) -> None:
        try:
            results[k] = server.infer("synthesize", "new", {"class": CLASSES[k % 4], "seed": 1000 + k})
        except Exception as err:  # noqa: BLE001 - reported below
            results[k] = err

    threads = [threading.Thread(target=call, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert all(getattr(results.get(k), "status_code", None) == 200 for k in range(8)), results
    ids = [results[k].json()["image"] for k in range(8)]
    assert len(set(ids)) == 8
    store = server.get("/datastore/", params={"output": "all"}).json()["objects"]
    for k, image_id in enumerate(ids):
        assert image_id in store, f"{image_id} lost from the datastore"
        info = store[image_id]["image"]["info"]
        assert info["provenance"]["seed"] == 1000 + k and info["class_name"] == CLASSES[k % 4]
    on_disk = json.loads((server.studies / "datastore_v2.json").read_text())["objects"]
    assert set(ids) <= set(on_disk)


def test_classify_real_and_synthetic_images(server: LabelServer, setup: dict):
    synthetic = synthesize(server, **{"class": "NORMAL", "seed": 5})["image"]
    for image_id in (setup["real_ids"][0], synthetic):
        r = server.infer("classify", image_id, {})
        assert r.status_code == 200, r.text
        res = r.json()
        assert res["prediction"] in CLASSES and set(res["probabilities"]) == set(CLASSES)
        assert abs(sum(res["probabilities"].values()) - 1.0) < 1e-4
        assert res["prediction"] == max(res["probabilities"], key=res["probabilities"].get)


def wait_for_checks(server: LabelServer, image_ids: list[str], timeout: float = 300) -> dict[str, dict]:
    """The images' infos once the ``qa`` scoring method has stored its checks in all of them."""
    deadline = time.time() + timeout
    while True:
        infos = {i: image_info(server, i) for i in image_ids}
        if all(info.get("qa") for info in infos.values()):
            return infos
        if time.time() > deadline:
            pytest.fail(f"no automated checks after {timeout} s: {infos}\n{server.tail()}")
        time.sleep(1)


def test_new_synthetic_images_get_the_automated_checks(server: LabelServer, setup: dict):
    made = synthesize(server, **{"class": "DME", "count": 2, "seed": 500})
    infos = wait_for_checks(server, made["images"])
    for info in infos.values():
        qa = info["qa"]
        assert qa["error"] is None and qa["scored"] and isinstance(qa["anatomy"]["passed"], bool)
        c = qa["classifier"]
        assert c["predicted"] in CLASSES and 0 <= c["intended_probability"] <= c["confidence"] <= 1
        assert c["agrees"] == (c["predicted"] == "DME" and c["intended_probability"] >= 0.5)
        assert 0 <= c["uncertainty"] <= 1
        near = qa["nearest_real"]  # against real_datalist's training split, threshold from its validation split
        assert near["distance"] > 0 and near["threshold"] > 0
        assert near["memorised"] == (near["distance"] < near["threshold"])
        assert qa["passed"] == (not qa["reasons"])
        assert qa["passed"] == (qa["anatomy"]["passed"] and c["agrees"] and not near["memorised"])
    assert "qa" in server.get("/info/").json()["scoring"]
    # the checks can be run again on demand (in the server process), and only on synthetic images
    target = made["images"][0]
    r = server.post("/scoring/qa", params={"run_sync": "true"}, json={"images": [target, setup["real_ids"][0]]})
    assert r.status_code == 200, r.text
    assert r.json()["scored"] == [target]
    again = image_info(server, target)["qa"]
    assert {k: v for k, v in again.items() if k != "scored"} == {k: v for k, v in infos[target]["qa"].items()
                                                               if k != "scored"}  # fmt: skip
    missing = server.post("/scoring/qa", params={"run_sync": "true"}, json={"images": ["no_such_image"]})
    assert missing.status_code == 404 and "no_such_image" in missing.text
    forged = server.put(
        "/datastore/image/info", params={"image": target}, files={"info": (None, json.dumps({"qa": {"passed": True}}))}
    )
    assert forged.status_code == 422 and "may not set" in forged.text
    assert image_info(server, target)["qa"] == again


def test_review_strategy_serves_the_least_certain_image_first(server: LabelServer):
    synthesize(server, **{"class": "CNV", "count": 3, "seed": 700})
    r = server.post("/scoring/qa", params={"run_sync": "true"}, json={})  # everything not scored yet
    assert r.status_code == 200, r.text
    store = server.get("/datastore/", params={"output": "all"}).json()["objects"]
    waiting = {
        i: o["image"]["info"]["qa"]["classifier"]["uncertainty"]
        for i, o in store.items()
        if o["image"]["info"].get("synthetic") and not o["image"]["info"].get("reviews")
    }
    assert len(waiting) >= 3
    most = max(waiting.values())
    served = server.next_sample("review", {"order": "uncertain", "client_id": "Dr Order", "lease_s": 0}).json()
    assert waiting[served["id"]] == most
    oldest = server.next_sample("review", {"client_id": "Dr Order", "lease_s": 0}).json()
    assert oldest["id"] in waiting
    # an image the reviewer skipped is not served again in that request: the next least certain one comes
    second = server.next_sample(
        "review", {"order": "uncertain", "client_id": "Dr Order", "lease_s": 0, "skip": [served["id"]]}
    ).json()
    assert second["id"] != served["id"]
    assert waiting[second["id"]] == max(v for k, v in waiting.items() if k != served["id"])
    bad_skip = server.next_sample("review", {"skip": "all"})
    assert bad_skip.status_code == 422 and "skip" in bad_skip.text
    bad = server.next_sample("review", {"order": "random"})
    assert bad.status_code == 422 and "order" in bad.text


def test_bad_requests_get_clear_4xx(server: LabelServer, setup: dict):
    target = synthesize(server, **{"class": "CNV", "seed": 77})["image"]
    outside = setup["root"] / "escaped.png"
    cases = [
        (server.infer("synthesize", "new", {"class": "MELANOMA"}), 422, "unknown class"),
        (server.infer("synthesize", "new", {"seed": 1}), 422, "'class' is required"),
        (server.infer("synthesize", "new", {"class": "CNV", "count": 0}), 422, "'count'"),
        (server.infer("synthesize", "new", {"class": "CNV", "steps": "many"}), 422, "'steps'"),
        (server.infer("classify", "/etc/passwd", {}), 400, "outside the studies folder"),
        (server.infer("classify", "../../etc/passwd", {}), 400, "not a plain file name"),
        (server.infer("classify", os.path.relpath("/etc/passwd", REPO), {}), 400, "not a plain file name"),
        (server.infer("classify", str(setup["root"] / "real_datalist.json"), {}), 400, "outside the studies folder"),
        (server.infer("classify", "no_such_image", {}), 404, "not in the datastore"),
        (server.infer("no_such_model", target, {}), 404, "unknown model"),
        (
            server.put(
                "/datastore/image",
                params={"image": "../escaped"},
                files={"file": ("x.png", b"\x89PNG"), "params": (None, "{}")},
            ),  # fmt: skip
            400,
            "not a plain file name",
        ),
        (server.get("/datastore/image", params={"image": "../real_datalist"}), 404, "NOT Found"),
        (server.submit_review(target, {"verdict": "accept"}), 422, "reviewer"),
        (server.submit_review(target, {"verdict": "accept", "reviewer": ""}), 422, "reviewer"),
        (server.submit_review(target, {"verdict": "reject", "reviewer": "Dr X", "anomalies": ["x"]}), 422, "unknown"),
        (server.submit_review(target, {"verdict": "good", "reviewer": "Dr X"}), 422, "'verdict'"),
        (server.submit_review(target, None, raw=b"{accept"), 422, "not JSON"),
        (server.submit_review("no_such_image", {"verdict": "accept", "reviewer": "Dr X"}), 404, "not in the"),
        (server.submit_review("../../x", {"verdict": "accept", "reviewer": "Dr X"}), 400, "not a plain file name"),
        (server.next_sample("review", {"class": "MELANOMA"}), 422, "unknown class"),
        (
            server.put(
                "/datastore/image/info",
                params={"image": target},
                files={"info": (None, json.dumps({"review_status": "accepted"}))},
            ),  # fmt: skip
            422,
            "may not set",
        ),
    ]
    for k, (r, status, words) in enumerate(cases):
        assert r.status_code == status and words in r.text, f"case {k}: {r.status_code} {r.text[:300]}"
    assert not outside.exists() and not (setup["root"] / "escaped").exists()
    info = image_info(server, target)
    assert info["review_status"] == "unreviewed" and "reviews" not in info  # nothing stored by the bad requests


def test_review_loop_export_and_filter(server: LabelServer, setup: dict, tmp_path: Path):
    # one more class-filtered batch; then review everything the strategy serves
    synthesize(server, **{"class": "DRUSEN", "count": 3, "seed": 300})
    r = server.next_sample("review", {"class": "DRUSEN", "client_id": "dr_a"})
    assert r.status_code == 200 and r.json()["class_name"] == "DRUSEN" and r.json()["synthetic"] is True
    decisions: dict[str, str] = {}
    served = []
    while True:
        r = server.next_sample("review", {"client_id": "dr_a"})
        assert r.status_code == 200, r.text
        if not r.json():
            break
        image_id = r.json()["id"]
        assert image_id not in served, "a reviewed image was served again"
        served.append(image_id)
        k = len(served)
        if k % 3 == 0:
            verdict = {"verdict": "reject", "anomalies": [DEFECTS[k % len(DEFECTS)]], "reviewer": "Dr A"}
        else:
            verdict = {"verdict": "accept", "reviewer": "Dr A", "comment": "plausible layers"}
        r = server.submit_review(image_id, verdict)
        assert r.status_code == 200, r.text
        decisions[image_id] = verdict["verdict"]
    assert len(served) >= 10  # 2 + 8 + 1 + 1 + 3 synthetic images were made by the tests above
    # a second reviewer overrules one acceptance (unanimous rule), then revises their own verdict once
    overruled = next(i for i, d in decisions.items() if d == "accept")
    for verdict in ("accept", "reject"):
        r = server.submit_review(overruled, {"verdict": verdict, "reviewer": "Dr B", "anomalies": ["absent_onh"]})
        assert r.status_code == 200, r.text
    decisions[overruled] = "reject"
    stored = json.loads(server.get("/datastore/label", params={"label": overruled, "tag": "review"}).content)
    assert [(v["reviewer"], v["verdict"]) for v in stored["reviews"]] == [("Dr A", "accept"), ("Dr B", "reject")]
    assert stored["decision"] == "reject" and image_info(server, overruled)["review_status"] == "rejected"

    out = export_reviews(setup["studies"], tmp_path / "export")
    accepted = sorted(i for i, d in decisions.items() if d == "accept")
    datalist = load_datalist(out["datalist"])
    items = datalist["training"]
    assert sorted(Path(it["image"]).stem for it in items) == accepted
    for it in items:
        assert it["synthetic"] is True and CLASSES[it["label"]] == it["class_name"]
        assert PROVENANCE_KEYS <= set(it["provenance"]) and Path(it["image"]).is_file()
    report = json.loads(Path(out["report_json"]).read_text())
    s = report["summary"]
    assert s["reviewed"] == len(decisions) and s["accepted"] == len(accepted)
    assert s["acceptance_rate"] == pytest.approx(len(accepted) / len(decisions), abs=1e-4)
    for cls in CLASSES:
        mine = [i for i in decisions if image_info(server, i)["class_name"] == cls]
        acc = sum(decisions[i] == "accept" for i in mine)
        assert s["per_class"][cls]["reviewed"] == len(mine) and s["per_class"][cls]["accepted"] == acc
    assert s["per_anomaly"]["absent_onh"]["images"] >= 1
    assert s["per_reviewer"]["Dr B"]["reviewed"] == 1
    anatomy = report["anatomy"]
    assert anatomy["available"] and anatomy["n"] == len(decisions)
    assert sum(anatomy["confusion"].values()) == len(decisions)
    md = Path(out["report_md"]).read_text()
    assert "| DRUSEN |" in md and "Cohen's kappa" in md and "absent_onh" in md

    # filter_accepted: a datalist mixing real and synthetic images keeps the real ones and the accepted ones
    rejected = sorted(i for i, d in decisions.items() if d == "reject")
    real_item = {"image": "/data/real.png", "label": 0, "class_name": "CNV", "synthetic": False}
    mixed = {
        "labels": dict(enumerate(CLASSES)),
        "training": [real_item]
        + [{"image": str(setup["studies"] / f"{i}.png"), "synthetic": True} for i in accepted + rejected],
        "validation": [],
        "test": [],
    }
    kept = filter_accepted(mixed, setup["studies"])
    assert [Path(it["image"]).stem for it in kept["training"]] == ["real", *accepted]
    assert kept["review_filter"]["removed_synthetic"] == len(rejected)
    manifest = [{"path": f"CNV/{i}.png", "sha256": image_info(server, i)["sha256"]} for i in accepted + rejected]
    assert len(filter_accepted(manifest, out["report_json"])) == len(accepted)  # matched by the files' sha256


def test_finetune_on_real_plus_accepted_publishes_new_weights(server: LabelServer, setup: dict):
    r = server.post("/train/finetune", params={"run_sync": "true"}, json={"ckpt_dir": str(setup["root"])})
    assert r.status_code == 422 and "ckpt_dir" in r.text, r.text[-3000:]  # the task sets it, never a request
    tiny = {"max_epochs": 1, "batch_size": 2, "num_workers": 0, "cache_rate": 0.0, "val_interval": 1,
            "grid_interval": 100, "log_interval": 1}  # fmt: skip
    r = server.post("/train/finetune", params={"run_sync": "true"}, json=tiny, timeout=600)
    assert r.status_code == 200, r.text[-3000:]
    res = r.json()
    reviews = load_reviews(setup["studies"]).values()
    accepted = sum(im["decision"] == "accept" for im in reviews if im["synthetic"])
    assert len(load_datalist(Path(res["run_dir"]) / "datalist.json")["training"]) == 8 + accepted
    assert res["status"] == "done" and res["real_training"] == 8 and res["accepted_synthetic"] == accepted > 0
    parent_sha = file_sha256(setup["gen_ckpt"])
    assert res["started_from_sha256"] == parent_sha != res["model_sha256"]
    # the bundle's finetune.json route: the new weights' diffusion.json records the weights the task started from
    settings = json.loads((Path(res["model"]).parent / "diffusion.json").read_text())
    assert settings["parent"]["model_sha256"] == parent_sha == res["parent_sha256"]
    assert settings["class_names"] == settings["parent"]["class_names"] == CLASSES  # every embedding row kept
    pointer = json.loads((setup["studies"] / ".medicraft" / "generator_current.json").read_text())
    assert pointer["sha256"] == res["model_sha256"] and pointer["parent_sha256"] == parent_sha
    new = synthesize(server, **{"class": "CNV", "seed": 4242})
    assert new["records"][0]["provenance"]["model_sha256"] == res["model_sha256"]
    assert new["records"][0]["provenance"]["parent_sha256"] == parent_sha
