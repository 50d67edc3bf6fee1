"""The feedback loop: turn the experts' verdicts into a datalist of accepted images and a report.

Works on the studies folder of the MONAI Label app directly (its ``datastore_v2.json`` and image files), so it runs
in the main environment, with or without a server (``medicraft review export STUDIES OUTPUT``):

- :func:`export_reviews` writes ``accepted_datalist.json`` (the accepted synthetic images as a datalist in the
  project's format, ``synthetic: true`` with their provenance), ``review_report.json`` and ``review_report.md``
  (acceptance rate per class, per anomaly tag and per reviewer, and how the verdicts compare with the automated
  anatomy checks of :mod:`medicraft_monai.metrics.anatomy` on the same images and with the checks the ``qa``
  scoring method stored with them, and the readers' accuracy in the blinded reading of
  :mod:`medicraft_monai.label.turing`);
- :func:`filter_accepted` keeps only accepted synthetic images in a datalist or a ``multiply`` manifest (real images
  always stay), matching images by the SHA-256 of their bytes (or their file name).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from medicraft_monai.data.datalist import SHA256_KEY, SPLITS, load_datalist, write_datalist
from medicraft_monai.data.errors import OCTDataError, UnknownLabelError
from medicraft_monai.data.keys import OCTKeys
from medicraft_monai.label.review import ANOMALY_TAGS, DECISION_RULES, decide, image_id_problem
from medicraft_monai.label.turing import load_turing_answers, turing_markdown, turing_summary
from medicraft_monai.synthesis.job import synthetic_datalist, synthetic_datalist_item
from medicraft_monai.utils import file_sha256, write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)

__all__ = [
    "ACCEPTED_DATALIST",
    "DATASTORE_FILE",
    "REPORT_JSON",
    "REPORT_MD",
    "ReviewedImage",
    "accepted_items",
    "export_reviews",
    "filter_accepted",
    "load_reviews",
    "review_summary",
]

DATASTORE_FILE = "datastore_v2.json"
ACCEPTED_DATALIST = "accepted_datalist.json"
REPORT_JSON = "review_report.json"
REPORT_MD = "review_report.md"


class ReviewedImage(dict):
    """One image of the datastore: ``id``, ``path``, ``synthetic``, ``class_name``, ``provenance``, ``sha256``,
    ``reviews`` (validated verdicts), ``decision`` (accept/reject/None), ``qa`` (the stored automated checks, or None)
    and ``refused`` (why a synthetic image is not exported, or None: see :func:`refusal`)."""


def refusal(image_id: str, path: Path, info: Mapping[str, Any], root: Path) -> str | None:
    """Why a synthetic image the datastore lists is not exported, or None: its id must be a plain file name, its
    file must lie inside the studies folder ``root`` (after following links) and exist, and it must be an image the
    app registered (provenance and checksum recorded) whose bytes are still the recorded ones."""
    problem = image_id_problem(image_id, root)
    if problem is not None:
        return f"its id {problem}: its file would lie outside the studies folder"
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        return f"its file {path} resolves to {resolved}, outside the studies folder"
    if not resolved.is_file():
        return f"its file {path} does not exist"
    if not info.get("provenance") or not info.get("sha256"):
        return "it has no provenance or checksum: not a synthetic image the app registered"
    if file_sha256(resolved) != info["sha256"]:
        return f"its file {path} is not the bytes the app recorded (sha256 differs): changed after it was registered"
    return None


def load_reviews(studies: str | os.PathLike, rule: str = "unanimous") -> dict[str, ReviewedImage]:
    """Every image of a MONAI Label studies folder with its verdicts, read from ``datastore_v2.json``.

    Args:
        studies: the studies folder given to ``monailabel start_server --studies``.
        rule: how several reviewers combine (:data:`~medicraft_monai.label.review.DECISION_RULES`).

    Raises:
        OCTDataError: no datastore file (the server never ran on this folder) or an unreadable one.
    """
    if rule not in DECISION_RULES:
        raise ValueError(f"unknown decision rule {rule!r}; use one of {list(DECISION_RULES)}")
    root = Path(studies).resolve()
    store = root / DATASTORE_FILE
    if not store.is_file():
        raise OCTDataError(store, "no MONAI Label datastore here (start the server on this studies folder first)")
    try:
        data = json.loads(store.read_text())
    except (OSError, ValueError) as err:
        raise OCTDataError(store, f"cannot read the datastore ({err})") from None
    images_dir = root / (data.get("images_dir") or ".")
    out: dict[str, ReviewedImage] = {}
    for image_id, obj in sorted((data.get("objects") or {}).items()):
        image = obj.get("image") or {}
        info = image.get("info") or {}
        reviews = list(info.get("reviews") or [])
        prov = dict(info.get("provenance") or {})
        path = images_dir / f"{image_id}{image.get('ext', '')}"
        synthetic = bool(info.get("synthetic"))
        out[image_id] = ReviewedImage(
            id=image_id,
            path=str(path.resolve()),
            synthetic=synthetic,
            refused=refusal(image_id, path, info, root) if synthetic else None,
            class_name=info.get("class_name") or prov.get("class_name"),
            label=info.get("label", prov.get("label")),
            provenance=prov,
            sha256=info.get("sha256", ""),
            reviews=reviews,
            decision=decide(reviews, rule),
            qa=info.get("qa"),
        )
    return out


def _class_list(images: Iterable[Mapping[str, Any]], class_names: Sequence[str] | None) -> list[str]:
    if class_names:
        return [str(c) for c in class_names]
    for im in images:
        names = (im.get("provenance") or {}).get("class_names")
        if names:
            return [str(c) for c in names]
    seen: list[str] = []
    for im in images:
        if im.get("class_name") and im["class_name"] not in seen:
            seen.append(im["class_name"])
    return seen


def accepted_items(
    images: Mapping[str, Mapping[str, Any]], class_names: Sequence[str] | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Datalist items (project format, absolute paths) of the accepted synthetic images, and the class list used.

    Raises:
        UnknownLabelError: an accepted image of a class that is not in ``class_names``.
    """
    synthetic = [im for im in images.values() if im["synthetic"]]
    names = _class_list(synthetic, class_names)
    items = []
    for im in synthetic:
        if im["decision"] != "accept":
            continue
        if im["class_name"] not in names:
            raise UnknownLabelError(im["path"], f"class {im['class_name']!r} is not one of {names}")
        prov = im["provenance"]
        items.append(
            synthetic_datalist_item(
                im["path"],
                names.index(im["class_name"]),
                im["class_name"],
                f"synthetic-{im['id']}",
                sha256=im["sha256"],
                seed=prov.get("seed"),
                model_sha256=prov.get("model_sha256", ""),
                provenance=prov,
                reviewers=[r["reviewer"] for r in im["reviews"]],
            )
        )
    return items, names


# ------------------------------------------------------------------------------------------------------ statistics
def _rate(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def _kappa(pairs: Sequence[tuple[bool, bool]]) -> float | None:
    """Cohen's kappa of two binary raters (None when undefined)."""
    n = len(pairs)
    if not n:
        return None
    po = sum(a == b for a, b in pairs) / n
    pa, pb = sum(a for a, _ in pairs) / n, sum(b for _, b in pairs) / n
    pe = pa * pb + (1 - pa) * (1 - pb)
    return None if pe >= 1 else round((po - pe) / (1 - pe), 4)


def _agreement(pairs: Sequence[tuple[bool, bool]]) -> dict[str, Any]:
    """How expert decisions (accept) and automated verdicts (pass) agree: count, agreement, kappa, confusion."""
    n = len(pairs)
    return {
        "n": n,
        "agreement": _rate(sum(a == b for a, b in pairs), n),
        "kappa": _kappa(pairs),
        "confusion": {
            "accept_pass": sum(a and b for a, b in pairs),
            "accept_fail": sum(a and not b for a, b in pairs),
            "reject_pass": sum(not a and b for a, b in pairs),
            "reject_fail": sum(not a and not b for a, b in pairs),
        },
        "automated_pass_rate": _rate(sum(b for _, b in pairs), n),
        "expert_accept_rate": _rate(sum(a for a, _ in pairs), n),
    }


def _stored_checks(reviewed: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Expert decisions against the automated checks the ``qa`` scoring method stored with each image (anatomy,
    classifier agreement, memorisation), overall and per check, for the images accepted and for those rejected."""
    scored = [im for im in reviewed if isinstance(im.get("qa"), Mapping) and isinstance(im["qa"].get("passed"), bool)]
    parts = {
        "anatomy_passed": lambda qa: (qa.get("anatomy") or {}).get("passed"),
        "classifier_agrees": lambda qa: (qa.get("classifier") or {}).get("agrees"),
        "memorised": lambda qa: (qa.get("nearest_real") or {}).get("memorised"),
    }
    by_decision = {}
    for decision in ("accept", "reject"):
        ims = [im["qa"] for im in scored if im["decision"] == decision]
        by_decision[decision] = {"n": len(ims)}
        for key, pick in parts.items():
            values = [v for v in (pick(qa) for qa in ims) if isinstance(v, bool)]
            by_decision[decision][key] = _rate(sum(values), len(values))
    return {
        "available": bool(scored),
        "n_unscored": len(reviewed) - len(scored),
        **_agreement([(im["decision"] == "accept", im["qa"]["passed"]) for im in scored]),
        "by_decision": by_decision,
    }


def _anatomy(reviewed: Sequence[Mapping[str, Any]], checker: Any) -> dict[str, Any]:
    """Expert decisions against the automated checks on the same images."""
    from medicraft_monai.data.io import read_bscan

    rows, pairs = [], []
    per_check: dict[str, Counter] = defaultdict(Counter)
    for im in reviewed:
        try:
            arr, _ = read_bscan(im["path"])
            res = checker.check(arr)
        except (OCTDataError, OSError, ValueError) as err:
            logger.warning("%s: anatomy checks failed (%s)", im["path"], err)
            continue
        accepted = im["decision"] == "accept"
        pairs.append((accepted, bool(res.passed)))
        tags = {t for r in im["reviews"] for t in r.get("anomalies", [])}
        for name, ok in res.checks.items():
            if ok is None:
                continue
            c = per_check[name]
            c["applicable"] += 1
            c["check_failed"] += ok is False
            c["expert_tagged"] += name in tags
            c["both"] += ok is False and name in tags
            c["agree"] += (ok is False) == (name in tags)
        rows.append({"image": im["id"], "expert": im["decision"], "checks_passed": bool(res.passed),
                     "failures": list(res.failures)})  # fmt: skip
    return {
        "available": True,
        **_agreement(pairs),
        "per_check": {
            k: {**dict(c), "agreement": _rate(c["agree"], c["applicable"])} for k, c in sorted(per_check.items())
        },
        "images": rows,
    }


def review_summary(images: Mapping[str, Mapping[str, Any]], rule: str = "unanimous") -> dict[str, Any]:
    """Review figures of images shaped like :class:`ReviewedImage` (``synthetic``, ``class_name``, ``reviews``,
    ``decision``): counts and acceptance rate overall, per class, per anomaly tag and per reviewer, inter-reviewer
    agreement and real controls (the report's ``summary``; the review page's progress panel)."""
    synthetic = [im for im in images.values() if im["synthetic"]]
    reviewed = [im for im in synthetic if im["decision"] is not None]
    accepted = [im for im in reviewed if im["decision"] == "accept"]
    per_class: dict[str, dict[str, Any]] = {}
    for cls in sorted({im["class_name"] for im in synthetic if im["class_name"]}):
        total = [im for im in synthetic if im["class_name"] == cls]
        rev = [im for im in total if im["decision"] is not None]
        acc = [im for im in rev if im["decision"] == "accept"]
        per_class[cls] = {"images": len(total), "reviewed": len(rev), "accepted": len(acc),
                          "acceptance_rate": _rate(len(acc), len(rev))}  # fmt: skip
    per_tag: dict[str, dict[str, Any]] = {}
    for tag in ANOMALY_TAGS:
        tagged = [im for im in reviewed if any(tag in r.get("anomalies", []) for r in im["reviews"])]
        acc = sum(im["decision"] == "accept" for im in tagged)
        per_tag[tag] = {"images": len(tagged), "share_of_reviewed": _rate(len(tagged), len(reviewed)),
                        "accepted": acc, "acceptance_rate": _rate(acc, len(tagged))}  # fmt: skip
    reviewers: dict[str, Counter] = defaultdict(Counter)
    for im in reviewed:
        for r in im["reviews"]:
            reviewers[r["reviewer"]]["reviewed"] += 1
            reviewers[r["reviewer"]]["accepted"] += r["verdict"] == "accept"
    multi = [im for im in reviewed if len(im["reviews"]) > 1]
    real = [im for im in images.values() if not im["synthetic"] and im["decision"] is not None]
    return {
        "rule": rule,
        "synthetic_images": len(synthetic),
        "reviewed": len(reviewed),
        "unreviewed": len(synthetic) - len(reviewed),
        "accepted": len(accepted),
        "rejected": len(reviewed) - len(accepted),
        "acceptance_rate": _rate(len(accepted), len(reviewed)),
        "per_class": per_class,
        "per_anomaly": per_tag,
        "per_reviewer": {
            k: {**dict(c), "acceptance_rate": _rate(c["accepted"], c["reviewed"])} for k, c in sorted(reviewers.items())
        },
        "inter_reviewer": {
            "images_with_several_reviews": len(multi),
            "unanimous": _rate(sum(len({r["verdict"] for r in im["reviews"]}) == 1 for im in multi), len(multi)),
        },
        "real_controls": {
            "reviewed": len(real),
            "accepted": sum(im["decision"] == "accept" for im in real),
            "acceptance_rate": _rate(sum(im["decision"] == "accept" for im in real), len(real)),
        },
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{100 * value:.1f}%"
    return str(value)


def _confusion_table(c: Mapping[str, int]) -> list[str]:
    """Markdown rows of an :func:`_agreement` confusion table: expert decision against the automated verdict."""
    return [
        "| | checks pass | checks fail |",
        "|---|---:|---:|",
        f"| expert accepts | {c['accept_pass']} | {c['accept_fail']} |",
        f"| expert rejects | {c['reject_pass']} | {c['reject_fail']} |",
    ]


def _markdown(report: Mapping[str, Any]) -> str:
    s = report["summary"]
    lines = [
        "# Expert review of synthetic OCT images",
        "",
        f"Studies folder: `{report['studies']}`; decision rule: **{s['rule']}**.",
        "",
        f"- synthetic images: {s['synthetic_images']} (reviewed {s['reviewed']}, unreviewed {s['unreviewed']})",
        f"- accepted: {s['accepted']}, rejected: {s['rejected']}, acceptance rate: **{_fmt(s['acceptance_rate'])}**",
        f"- accepted images written to `{report['datalist']}`",
        f"- refused (not exported, not counted): {len(report.get('refused', []))} image(s) the datastore lists outside the "
        "studies folder, missing, changed or not registered by the app",
        *[f"  - `{r['image']}`: {r['reason']}" for r in report.get("refused", [])],
        "",
        "## Acceptance per class",
        "",
        "| class | images | reviewed | accepted | acceptance rate |",
        "|---|---:|---:|---:|---:|",
    ]
    for cls, c in s["per_class"].items():
        lines.append(f"| {cls} | {c['images']} | {c['reviewed']} | {c['accepted']} | {_fmt(c['acceptance_rate'])} |")
    lines += [
        "",
        "## Anomalies named by the experts",
        "",
        "| anomaly | images | share of reviewed | accepted anyway | acceptance rate |",
        "|---|---:|---:|---:|---:|",
    ]
    for tag, c in s["per_anomaly"].items():
        lines.append(
            f"| {tag} | {c['images']} | {_fmt(c['share_of_reviewed'])} | {c['accepted']} | "
            f"{_fmt(c['acceptance_rate'])} |"
        )
    lines += ["", "## Reviewers", "", "| reviewer | reviewed | accepted | acceptance rate |", "|---|---:|---:|---:|"]
    for name, c in s["per_reviewer"].items():
        lines.append(f"| {name} | {c['reviewed']} | {c['accepted']} | {_fmt(c['acceptance_rate'])} |")
    ir = s["inter_reviewer"]
    lines += ["", f"Images judged by several reviewers: {ir['images_with_several_reviews']} "
              f"(unanimous: {_fmt(ir['unanimous'])})."]  # fmt: skip
    rc = s["real_controls"]
    if rc["reviewed"]:
        lines += ["", f"Real images reviewed as controls: {rc['reviewed']}, accepted {_fmt(rc['acceptance_rate'])}."]
    a = report["anatomy"]
    lines += ["", "## Agreement with the automated anatomy checks", ""]
    if not a.get("available"):
        lines.append(f"Not computed: {a.get('reason', 'disabled')}.")
    else:
        c = a["confusion"]
        lines += [
            f"On {a['n']} reviewed images: agreement **{_fmt(a['agreement'])}** (Cohen's kappa {a['kappa']}); "
            f"experts accepted {_fmt(a['expert_accept_rate'])}, the checks passed {_fmt(a['automated_pass_rate'])}.",
            "",
            *_confusion_table(c),
            "",
            "| check | applicable | check failed | expert tagged | both | agreement |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for k, c in a["per_check"].items():
            lines.append(
                f"| {k} | {c.get('applicable', 0)} | {c.get('check_failed', 0)} | {c.get('expert_tagged', 0)} | "
                f"{c.get('both', 0)} | {_fmt(c['agreement'])} |"
            )
    q = report.get("automated_qa") or {}
    lines += ["", "## Agreement with the stored automated checks (scoring method `qa`)", ""]
    if not q.get("available"):
        lines.append("No reviewed image has stored checks (the `qa` scoring method was off or has not run).")
    else:
        c = q["confusion"]
        lines += [
            f"On {q['n']} reviewed images with checks ({q['n_unscored']} without): agreement "
            f"**{_fmt(q['agreement'])}** (Cohen's kappa {q['kappa']}); experts accepted "
            f"{_fmt(q['expert_accept_rate'])}, all checks passed on {_fmt(q['automated_pass_rate'])}.",
            "",
            *_confusion_table(c),
            "",
            "| expert decision | images | anatomy passed | classifier agrees | memorised |",
            "|---|---:|---:|---:|---:|",
        ]
        for decision, d in q["by_decision"].items():
            lines.append(
                f"| {decision} | {d['n']} | {_fmt(d['anatomy_passed'])} | {_fmt(d['classifier_agrees'])} | "
                f"{_fmt(d['memorised'])} |"
            )
    if "turing" in report:
        lines += ["", *turing_markdown(report["turing"])]
    return "\n".join(lines) + "\n"


def export_reviews(
    studies: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    rule: str = "unanimous",
    class_names: Sequence[str] | None = None,
    anatomy: bool = True,
    anatomy_checker: Any = None,
) -> dict[str, Any]:
    """Write the accepted synthetic images as a datalist and the review report (JSON and Markdown).

    Args:
        studies: the MONAI Label studies folder.
        output_dir: where ``accepted_datalist.json``, ``review_report.json`` and ``review_report.md`` go.
        rule: how several reviewers' verdicts combine (``unanimous``, ``majority``, ``any``).
        class_names: the datalist's classes in label order (default: the generator's, from the provenance).
        anatomy: compare the verdicts with the automated anatomy checks.
        anatomy_checker: the checker (default ``medicraft_monai.metrics.anatomy.AnatomyChecker()``).

    Returns:
        ``{"datalist", "report_json", "report_md"}`` (paths), ``"summary"`` (the report's figures), ``"refused"``
        and ``"turing"`` (the blinded reading's accuracy, :func:`~medicraft_monai.label.turing.turing_summary`).
    """
    every = load_reviews(studies, rule)
    refused = [im for im in every.values() if im["refused"]]
    for im in refused:
        logger.warning("%s: refused image %r: %s", Path(studies) / DATASTORE_FILE, im["id"], im["refused"])
    images = {k: im for k, im in every.items() if not im["refused"]}
    items, names = accepted_items(images, class_names)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = review_summary(images, rule)
    datalist = synthetic_datalist(
        items,
        "expert-accepted-synthetic",
        f"synthetic images accepted by expert review ({rule}) in {Path(studies).resolve()}",
        {"source": "medicraft_monai MONAI Label review", "rule": rule, "count": len(items)},
        base={"labels": {str(i): c for i, c in enumerate(names)}, "num_classes": len(names)},
    )
    dl_path = write_datalist(out / ACCEPTED_DATALIST, datalist)

    reviewed = [im for im in images.values() if im["synthetic"] and im["decision"] is not None]
    if not anatomy:
        anat: dict[str, Any] = {"available": False, "reason": "disabled"}
    else:
        try:
            from medicraft_monai.metrics.anatomy import AnatomyChecker
        except ImportError as err:  # the checks are optional for the export
            anat = {"available": False, "reason": f"medicraft_monai.metrics.anatomy not importable ({err})"}
        else:
            anat = _anatomy(reviewed, anatomy_checker or AnatomyChecker())
    report = {
        "studies": str(Path(studies).resolve()),
        "turing": turing_summary(load_turing_answers(studies)),
        "datalist": str(dl_path),
        "summary": summary,
        "refused": [{"image": im["id"], "path": im["path"], "reason": im["refused"]} for im in refused],
        "anatomy": anat,
        "automated_qa": _stored_checks(reviewed),
        "images": [
            {
                "image": im["id"],
                "class_name": im["class_name"],
                "sha256": im["sha256"],
                "path": im["path"],
                "decision": im["decision"],
                "reviews": im["reviews"],
                "qa": im["qa"],
            }  # fmt: skip
            for im in images.values()
            if im["synthetic"]
        ],
    }
    json_path = out / REPORT_JSON
    write_json_atomic(json_path, report)
    md_path = out / REPORT_MD
    write_text_atomic(md_path, _markdown(report))
    return {
        "datalist": str(dl_path),
        "report_json": str(json_path),
        "report_md": str(md_path),
        "summary": summary,
        "refused": report["refused"],
        "turing": report["turing"],
    }


# -------------------------------------------------------------------------------------------------------- filtering
def _decisions(reviews: Any, rule: str) -> tuple[dict[str, str], dict[str, str]]:
    """(sha256 -> decision, file stem -> decision) from a studies folder, an export report or a mapping."""
    if isinstance(reviews, (str, os.PathLike)):
        path = Path(reviews)
        if path.is_dir():
            images = load_reviews(path, rule)
            entries = [
                (im["sha256"], im["id"], im["decision"])
                for im in images.values()
                if im["synthetic"] and not im["refused"]
            ]
        else:
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                raise OCTDataError(path, f"cannot read the review report ({err})") from None
            return _decisions(data, rule)
    elif isinstance(reviews, Mapping) and "images" in reviews and isinstance(reviews["images"], list):
        entries = [
            (im.get("sha256", ""), im.get("image", ""), decide(im.get("reviews"), rule) if im.get("reviews") else None)
            for im in reviews["images"]
        ]
    elif isinstance(reviews, Mapping):
        entries = [(v.get("sha256", ""), k, v.get("decision")) for k, v in reviews.items()]
    else:
        raise TypeError(f"reviews must be a studies folder, a review report or a mapping, got {type(reviews)}")
    by_sha = {sha: d for sha, _, d in entries if sha and d}
    by_name = {name: d for _, name, d in entries if name and d}
    return by_sha, by_name


def _stem(path: Any) -> str:
    name = Path(str(path)).name
    for suffix in (".nii.gz", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".nii", ".dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def filter_accepted(
    datalist_or_manifest: str | os.PathLike | Mapping[str, Any] | Sequence[Mapping[str, Any]],
    reviews: Any,
    *,
    rule: str = "unanimous",
    keep_unreviewed: bool = False,
) -> dict[str, Any] | list[dict[str, Any]]:
    """Keep only the synthetic images the experts accepted (real images always stay).

    Args:
        datalist_or_manifest: a datalist (dict or JSON path; items with ``synthetic``) or a ``multiply`` manifest
            (list of records, or a ``manifest.jsonl`` path; every record is synthetic).
        reviews: the studies folder, an export's ``review_report.json`` (path or dict), or a mapping
            ``image id -> {"decision", "sha256"}``.
        rule: how several reviewers combine.
        keep_unreviewed: also keep synthetic images nobody reviewed yet.

    Returns:
        The filtered datalist (``numTraining`` etc. updated, ``review_filter`` counts added) or manifest records.
    """
    by_sha, by_name = _decisions(reviews, rule)

    def keep(item: Mapping[str, Any], synthetic: bool) -> bool:
        if not synthetic:
            return True
        decision = by_sha.get(item.get(SHA256_KEY) or "") or by_name.get(_stem(item.get("image", item.get("path"))))
        return decision == "accept" or (decision is None and keep_unreviewed)

    source = datalist_or_manifest
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.suffix == ".jsonl":
            source = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        else:
            source = load_datalist(path, check=False)
    if isinstance(source, Mapping):
        out = dict(source)
        counts = Counter()
        for split in SPLITS:
            if split not in source:
                continue
            kept = []
            for it in source[split]:
                synthetic = bool(it.get(OCTKeys.SYNTHETIC))
                ok = keep(it, synthetic)
                counts[("kept" if ok else "removed") + ("_synthetic" if synthetic else "_real")] += 1
                if ok:
                    kept.append(it)
            out[split] = kept
            out[f"num{split.capitalize()}"] = len(kept)
        out["review_filter"] = {"rule": rule, "keep_unreviewed": keep_unreviewed, **dict(sorted(counts.items()))}
        return out
    return [dict(r) for r in source if keep(r, True)]
