"""The medicraft MONAI Label app: generate synthetic OCT B-scans on demand, classify, review, fine-tune.

Start it in the MONAI Label environment (``bash scripts/setup_label_env.sh`` creates ``.venv-label``)::

    PATH=.venv-label/bin:$PATH monailabel start_server --app "$(medicraft label app-dir)" --studies STUDIES \\
        --conf generator_bundle bundles/oct_ddpm --conf classifier_bundle bundles/oct_classifier

``--conf`` keys: ``generator_bundle`` (required), ``generator_ckpt``, ``classifier_bundle``, ``classifier_ckpt``,
``classifier_datalist`` (gives the classifier its class names), ``real_datalist`` (real images for fine-tuning),
``generator_overrides`` and ``classifier_overrides`` (JSON objects of bundle config overrides, e.g.
``{"num_inference_steps": 20}``; the generator's also apply to fine-tuning), ``device`` (default ``cpu``), ``max_count`` (images per synthesize request, default 16), ``lease_s`` (seconds an
image stays with the reviewer it was served to, default 300), ``auto_reload`` (watch the studies folder for
files added by hand, default false), ``num_inference_steps`` (default sampling steps), ``turing_datalist`` (a project
datalist whose ``test`` split, else ``validation`` split, holds the real held-out B-scans of the review page's
blinded reading; without it the page has no blinded reading; its real images are framed as the generator's training
data was, from ``crop_height`` and ``resize_mode`` of the generator bundle's ``train.json``, or ``turing_crop_height``
and ``turing_resize_mode``).

The review page for the medical team is served by the same server at ``/review/`` (:mod:`.lib.page`).

Automated checks of every new synthetic image (scoring method ``qa``, see ``docs/label.md``): ``qa`` (score new
images as they are made, default true), ``eval_bundle`` (the evaluation bundle whose fixed feature extractor
measures the distance to the nearest real training image, default the shipped ``oct_synthesis_eval``; the real
training images are ``real_datalist``'s training split, the memorisation threshold comes from its validation or
test split; without ``real_datalist`` that check is skipped), ``eval_ckpt``, ``anatomy_profile`` (``spectralis``,
``phantom`` or ``none``; default ``spectralis``), ``qa_crop_height`` (rows kept around the retina of the real images
before comparison; default: the generator bundle's ``train.json`` ``crop_height``, whose ``resize_mode`` also frames
them), ``qa_min_confidence`` (the
classifier's lowest probability of the intended class that counts as agreement, default 0.5), ``review_order``
(``oldest`` or ``uncertain``: the images the classifier is least sure about first; default ``oldest``).

Tasks: infer ``synthesize`` and ``classify``, strategy ``review``, train ``finetune``, scoring ``qa``; see
``docs/label.md``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp
from monailabel.utils.others.generic import strtobool

from medicraft_monai.bundles import bundle_path
from medicraft_monai.evaluation.per_image import ImageQA
from medicraft_monai.label.lib.datastore import ReviewDatastore, check_image_id
from medicraft_monai.label.lib.infers import ClassifyTask, SynthesizeTask
from medicraft_monai.label.lib.page import mount_review_page
from medicraft_monai.label.lib.scoring import ScoreSynthetic
from medicraft_monai.label.lib.strategy import NextUnreviewed
from medicraft_monai.label.lib.trainer import FinetuneGenerator
from medicraft_monai.label.review import ANOMALY_TAGS
from medicraft_monai.label.turing import TuringAnswers, TuringDeck, held_out_items

logger = logging.getLogger(__name__)


class MedicraftLabelApp(MONAILabelApp):
    """MONAI Label app of medicraft_monai (see the module docstring for its ``--conf`` keys)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        conf = dict(conf or {})
        if not conf.get("generator_bundle"):
            raise ValueError("--conf generator_bundle <path> is required (a generator bundle such as bundles/oct_ddpm)")
        self.device = conf.get("device", "cpu")
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="medicraft_monai",
            description="Synthetic OCT B-scans on demand, expert review and generator fine-tuning",
            version="0.1.0",
        )
        self.turing = self._turing_deck()

    def _turing_deck(self) -> TuringDeck | None:
        """The review page's blinded reading (``--conf turing_datalist``), or None."""
        path = self.conf.get("turing_datalist")
        if not path:
            return None
        gen = self.synthesizer.generator
        items = held_out_items(path, gen.class_names)
        prep = self._training_preparation()
        if self.conf.get("turing_crop_height"):
            prep["crop_height"] = int(self.conf["turing_crop_height"]) or None
        if self.conf.get("turing_resize_mode"):
            prep["resize_mode"] = self.conf["turing_resize_mode"]
        return TuringDeck(items, TuringAnswers(self.studies), gen.image_shape[-2:], **prep)

    def _training_preparation(self) -> dict[str, Any]:
        """How the generator's training data was prepared (``crop_height``, ``resize_mode`` of its ``train.json``),
        for framing real images like synthetic ones."""
        from medicraft_monai.networks import bundle_parser

        found: dict[str, Any] = {"crop_height": None, "resize_mode": None}
        try:
            parser = bundle_parser(self.conf["generator_bundle"], config_file="train.json")
            for key in found:
                if key in parser:
                    found[key] = parser.get_parsed_content(key)
        except (FileNotFoundError, KeyError, ValueError) as err:
            logger.warning("the generator's training preparation is unknown (%s): real images are only resized", err)
        return found

    def on_init_complete(self) -> None:
        super().on_init_complete()
        if not mount_review_page(self):
            logger.warning("the review page is not served: the server is not monailabel.app:app")

    # ----------------------------------------------------------------------------------------------- components
    def init_datastore(self) -> ReviewDatastore:
        return ReviewDatastore(self.studies, auto_reload=strtobool(self.conf.get("auto_reload", "false")))

    def _json_conf(self, key: str) -> dict[str, Any]:
        text = self.conf.get(key) or "{}"
        try:
            value = json.loads(text)
        except ValueError as err:
            raise ValueError(f"--conf {key}: not a JSON object ({err}): {text!r}") from None
        if not isinstance(value, dict):
            raise ValueError(f"--conf {key}: not a JSON object: {text!r}")
        return value

    def init_infers(self) -> dict[str, Any]:
        overrides = self._json_conf("generator_overrides")
        if self.conf.get("num_inference_steps"):
            overrides["num_inference_steps"] = int(self.conf["num_inference_steps"])
        cls_overrides = self._json_conf("classifier_overrides")
        if self.conf.get("classifier_datalist"):
            cls_overrides["datalist"] = str(Path(self.conf["classifier_datalist"]).resolve())
        self.scorer = ScoreSynthetic(lambda: self._image_qa(cls_overrides))
        auto_score = strtobool(self.conf.get("qa", "true"))
        self.synthesizer = SynthesizeTask(
            self.conf["generator_bundle"],
            datastore=self.datastore(),
            ckpt_path=self.conf.get("generator_ckpt"),
            device=self.device,
            max_count=int(self.conf.get("max_count", 16)),
            overrides=overrides,
            on_registered=(lambda ids: self.scorer.submit(self.datastore(), ids)) if auto_score else None,
        )
        infers: dict[str, Any] = {"synthesize": self.synthesizer}
        if self.conf.get("classifier_bundle"):
            infers["classify"] = ClassifyTask(
                self.conf["classifier_bundle"],
                ckpt_path=self.conf.get("classifier_ckpt"),
                device=self.device,
                overrides=cls_overrides,
            )
        return infers

    def _image_qa(self, cls_overrides: dict[str, Any]) -> ImageQA:
        """The automated checks of the ``qa`` scoring method, from the ``--conf`` keys (built on first use)."""
        real = self.conf.get("real_datalist") or None
        profile = self.conf.get("anatomy_profile", "spectralis")
        prep = self._training_preparation()  # real images framed as the generator's training data
        crop = int(self.conf.get("qa_crop_height") or prep["crop_height"] or 0)
        return ImageQA.from_bundles(
            self.conf.get("classifier_bundle") or None,
            (self.conf.get("eval_bundle") or str(bundle_path("oct_synthesis_eval"))) if real else None,
            real,
            classifier_ckpt=self.conf.get("classifier_ckpt"),
            classifier_overrides=cls_overrides,
            eval_ckpt=self.conf.get("eval_ckpt"),
            anatomy_profile=None if profile in ("", "none") else profile,
            image_size=self.synthesizer.generator.image_shape[1:],
            crop_height=crop or None,
            resize_mode=prep["resize_mode"] or "fit",
            min_confidence=float(self.conf.get("qa_min_confidence", 0.5)),
            device=self.device,
            progress=False,
        )

    def init_strategies(self) -> dict[str, Any]:
        return {
            "review": NextUnreviewed(
                self.synthesizer.generator.class_names,
                float(self.conf.get("lease_s", 300)),
                order=self.conf.get("review_order", "oldest"),
            )
        }

    def init_trainers(self) -> dict[str, Any]:
        return {
            "finetune": FinetuneGenerator(
                self.conf["generator_bundle"],
                self.studies,
                self.synthesizer.generator.class_names,
                self.conf.get("generator_ckpt"),
                real_datalist=self.conf.get("real_datalist"),
                bundle_overrides=self._json_conf("generator_overrides"),
            )
        }

    def init_scoring_methods(self) -> dict[str, Any]:
        return {"qa": self.scorer}

    def info(self) -> dict[str, Any]:
        meta = super().info()
        meta["review"] = {"anomaly_tags": list(ANOMALY_TAGS), "verdicts": ["accept", "reject"], "label_tag": "review"}
        return meta

    # ------------------------------------------------------------------------------------------------ requests
    def _resolve_image(self, image: Any) -> str:
        """A datastore id, or an uploaded file, as a path; HTTP 400 for paths outside the studies folder, 404 for
        unknown ids.

        Only absolute paths are taken as files (MONAI Label's uploads and images of the studies folder): a relative
        path such as ``../../etc/passwd`` is never resolved against the server's working directory, so the answer
        does not depend on where the server was started; it is refused as an unsafe image id.
        """
        store: ReviewDatastore = self.datastore()
        if isinstance(image, str) and store.has_image(image):
            return store.get_image_uri(image)
        if isinstance(image, str) and os.path.isabs(image) and os.path.isfile(image):
            path = Path(image).resolve()
            upload = path.parent == Path(tempfile.gettempdir()).resolve() and path.name.startswith("tmp")
            inside = store.studies_path() in path.parents
            if upload or inside:
                return str(path)
            raise HTTPException(status_code=400, detail=f"image {image!r} is outside the studies folder")
        check_image_id(image, store.studies_path())
        raise HTTPException(status_code=404, detail=f"image {image!r} is not in the datastore")

    def infer(self, request: dict[str, Any], datastore: Any = None) -> dict[str, Any]:
        model = request.get("model")
        if model not in self._infers:
            raise HTTPException(status_code=404, detail=f"unknown model {model!r}; available: {sorted(self._infers)}")
        request = dict(request)
        if model == "synthesize":
            request["image"] = ""  # generation needs no input image; MONAI Label's /infer requires a placeholder
        else:
            request["image"] = self._resolve_image(request.get("image"))
        return super().infer(request, datastore)
