"""The ``medicraft`` command: home of the user-facing commands.

Run ``medicraft --help`` for the list and ``medicraft COMMAND --help`` for one command's options. Every
command is a thin layer over a library function, so everything it does can also be done from Python or from
a MONAI Bundle config.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import fire


def _as_list(value: str | Sequence[str] | None) -> list[str] | None:
    """Fire passes ``--classes a,b`` as a tuple and ``--classes a`` as a string; accept both."""
    if value is None:
        return None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def _numbers(value: str | float | Sequence) -> list[str]:
    """A comma-separated option of numbers as fire passes it (a number, a string or a tuple), as texts."""
    return _as_list(str(value) if isinstance(value, (int, float)) else value) or []


def _text(value: int | float | str | Sequence) -> str | Sequence:
    """A single number from the command line as text, so that :func:`_as_list` reads it like "0" or "0,1"."""
    return str(value) if isinstance(value, (int, float)) else value


def _as_mapping(value: str | dict | None) -> dict | None:
    """Accept a dict (fire parses ``--prevalence '{"healthy": 0.7}'``) or a JSON string."""
    if value is None or isinstance(value, dict):
        return value
    return json.loads(value)


class MedicraftCLI:
    """medicraft_monai: multiply small OCT data sets with class-conditioned diffusion models.

    Commands: phantom, datalist, subsample, multiply, generate, evaluate, choose_sampling, label_efficiency, demo, info; label app_dir; review
    export; bundle verify, pack, export; zoo list, info.
    """

    def __init__(self) -> None:
        self.label = LabelCommands()
        self.review = ReviewCommands()
        self.bundle = BundleCommands()
        self.zoo = ZooCommands()

    def phantom(
        self,
        output_dir: str,
        exams: int = 12,
        fmt: str = "png",
        seed: int = 0,
        classes: str | Sequence[str] | None = None,
        prevalence: str | dict | None = None,
        defect: str | None = None,
        height: int = 256,
        width: int = 512,
        planes: int = 12,
        fractions: Sequence[float] = (0.7, 0.15, 0.15),
        overwrite: bool = False,
    ) -> None:
        """Write a phantom OCT data set (PNG or DICOM exams), its ground truth and a patient-split datalist.

        Args:
            output_dir: folder to write to (created).
            exams: number of exams (each ``planes`` radial B-scans of one eye).
            fmt: "png" (one 8-bit PNG per B-scan) or "dicom" (one multi-frame Ophthalmic Tomography file per exam).
            seed: random seed; the same seed gives the same data set.
            classes: class names, comma-separated (default healthy,benign,melanoma).
            prevalence: JSON mapping class name -> weight, for imbalanced sets, e.g. '{"healthy": 8, "melanoma": 1}'.
            defect: inject one failure mode into every exam (doubled_fovea, absent_fovea, hypoplastic_fovea,
                absent_onh, corrupted_image, abnormal_vessel_diameter).
            height: B-scan height in pixels.
            width: B-scan width in pixels.
            planes: radial planes per exam.
            fractions: training, validation, test fractions of patients.
            overwrite: replace a phantom data set of other settings already in output_dir (deletes only the files
                the phantom wrote, as listed in output_dir/phantom_files.json). A rerun with the same settings resumes.
        """
        from medicraft_monai.data.phantom import make_phantom_dataset

        make_phantom_dataset(
            output_dir,
            exams=exams,
            fmt=fmt,
            seed=seed,
            classes=_as_list(classes),
            prevalence=_as_mapping(prevalence),
            defect=defect,
            height=height,
            width=width,
            planes=planes,
            fractions=tuple(fractions),
            overwrite=overwrite,
        )
        print(f"phantom data set written to {output_dir} (datalist: {output_dir}/datalist.json)")

    def datalist(
        self,
        source: str,
        output: str = "datalist.json",
        classes: str | Sequence[str] | None = None,
        fractions: Sequence[float] = (0.7, 0.15, 0.15),
        seed: int = 0,
        strict: bool = False,
        check_images: bool = True,
        patient_regex: str | None = None,
        labels_csv: str | None = None,
    ) -> None:
        """Build a patient-split MONAI datalist from a folder per class, a CSV, or a DICOM folder.

        Bad files are listed with the reason and left out (``--strict`` stops instead); the per-class,
        per-split count table and the class weights are printed.

        Args:
            source: a folder with one sub-folder per class, a CSV file, or a folder of DICOM files.
            output: where to write the datalist JSON (a .json file, or a folder for its datalist.json); never one
                of the inputs or a file inside a class folder of the source.
            classes: class names in label order, comma-separated (default: sorted names found).
            fractions: training, validation, test fractions of patients.
            seed: split seed.
            strict: stop at the first bad input instead of leaving it out.
            check_images: decode every image once to find corrupt or truncated files.
            patient_regex: regular expression with one group that extracts the patient id from a file name.
            labels_csv: for DICOM folders, a CSV mapping patient_id or study_uid to class.
        """
        from medicraft_monai.data.datalist import build_datalist, class_weights, count_table

        datalist = build_datalist(
            source,
            output=output,
            classes=_as_list(classes),
            fractions=tuple(fractions),
            seed=seed,
            strict=strict,
            check_images=check_images,
            patient_regex=patient_regex,
            labels_csv=labels_csv,
        )
        print(count_table(datalist))
        names = [datalist["labels"][str(i)] for i in range(len(datalist["labels"]))]
        weights = class_weights(datalist)
        print("class weights: " + ", ".join(f"{n}={w:.3f}" for n, w in zip(names, weights)))
        print(f"datalist written to {output}")

    def subsample(
        self,
        datalist: str,
        output: str,
        fractions: str | dict | None = None,
        seed: int = 0,
        overwrite: bool = False,
        drop: str | Sequence[str] | None = None,
    ) -> None:
        """Write a copy of a datalist whose training split keeps only a fraction of some classes (an imbalanced set),
        or without some classes in any split (--drop); the patient-level splits are otherwise kept.

        The subset is the one ``medicraft evaluate`` trains its imbalance experiments on with the settings
        ``{"imbalance": FRACTIONS, "imbalance_seed": SEED}``, so a generator fine-tuned on this copy has seen exactly
        the real images those classifiers see. Validation and test are unchanged.

        Args:
            datalist: the source datalist JSON.
            output: the new datalist JSON (never the source).
            fractions: JSON mapping class name -> fraction of its training images kept, e.g. '{"DRUSEN": 0.1}'.
            seed: the seed of the choice.
            overwrite: replace an existing output file.
            drop: classes removed from every split, comma-separated (labels renumbered), e.g. the parent of a study
                that must never see the class the study cuts.
        """
        from medicraft_monai.data.datalist import count_table, subsample_datalist

        try:
            cut = _as_mapping(fractions)
        except json.JSONDecodeError as e:
            raise ValueError(f"--fractions must be a JSON mapping such as '{{\"DRUSEN\": 0.1}}' ({e})") from None
        data = subsample_datalist(datalist, output, cut, seed=seed, overwrite=overwrite, drop=_as_list(drop) or ())
        print(count_table(data))
        print(f"subsampled datalist written to {output}")

    def multiply(
        self,
        datalist: str,
        output_dir: str,
        bundle_root: str | None = None,
        target: str | float | dict = "balance",
        fmt: str = "png",
        bit_depth: int = 8,
        batch_size: int = 16,
        seed: int = 0,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        ckpt_path: str | None = None,
        sampler: str | None = None,
        device: str | None = None,
        split: str = "training",
        progress: bool = True,
        accepted_from: str | None = None,
        strip_source_names: bool = False,
    ) -> None:
        """Multiply a real data set with a trained class-conditioned generator bundle.

        Samples the images the target asks for, writes them (marked synthetic, with provenance), a manifest, a
        synthetic-only datalist and a real + synthetic datalist. A rerun after an interruption finishes the job
        without redoing or duplicating anything; under ``torchrun --nproc_per_node=N`` it shards across processes
        (``torchrun --standalone --nproc_per_node=2 -m medicraft_monai.synthesis.multiply ...``).

        Args:
            datalist: the real datalist JSON (see ``medicraft datalist``).
            output_dir: where the images, manifest and datalists go.
            bundle_root: the generator bundle folder (default: the shipped oct_ddpm, see medicraft_monai.bundles).
            target: "balance" (every class up to the largest), "multiply:N" (every class to N times its count),
                or images to add per class as JSON, e.g. '{"melanoma": 200}'.
            fmt: png (default), nifti or dicom.
            bit_depth: 8 or 16.
            batch_size: images sampled together.
            seed: the job's seed (each image's seed derives from it, its class and its index).
            num_inference_steps: sampling steps (default: the bundle's).
            guidance_scale: classifier-free guidance scale (default: the bundle's).
            ckpt_path: weights to use (default: the bundle's models/model.pt).
            sampler: a name of the sampler registry, medicraft_monai.schedulers.SAMPLERS (default: the bundle's).
            device: cpu, cuda, cuda:1 ... (default: CUDA when available).
            split: the split whose real images are counted.
            progress: show progress and print count tables.
            accepted_from: expert reviews (a MONAI Label studies folder or an export's review_report.json): also
                write ``datalist_synthetic_accepted.json`` and ``datalist_real_synthetic_accepted.json`` that keep
                only the synthetic images the experts accepted.
            strip_source_names: write nothing taken from the source's names next to the synthetic images (generic
                datalist names and descriptions, the real datalist by its sha256 only; see docs/multiply.md).
        """
        from medicraft_monai.bundles import bundle_path
        from medicraft_monai.synthesis import multiply

        result = multiply(
            datalist,
            output_dir,
            bundle_root=bundle_root or bundle_path("oct_ddpm"),
            target=target,
            split=split,
            fmt=fmt,
            bit_depth=bit_depth,
            batch_size=batch_size,
            seed=seed,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            ckpt_path=ckpt_path,
            overrides={"sampler": sampler} if sampler else None,
            device=device,
            progress=progress,
            strip_source_names=strip_source_names,
        )
        if accepted_from:
            _write_accepted(result, accepted_from)

    def generate(
        self,
        bundle: str,
        output_dir: str,
        class_name: str | Sequence[str] | None = None,
        num_samples: int = 4,
        seed: int = 0,
        steps: int | None = None,
        guidance_scale: float | None = None,
        batch_size: int = 16,
        fmt: str = "png",
        bit_depth: int = 8,
        device: str | None = None,
        progress: bool = True,
        sampler: str | None = None,
    ) -> None:
        """Sample synthetic B-scans from a generator bundle into a folder (medicraft_monai.generate from Python).

        Image i of a class gets the seed that ``medicraft multiply`` gives it, so the same --seed (and --batch_size)
        gives the same images as multiply. Writes images/<class>/synthetic_<class>_<index>_s<seed>.png (marked
        synthetic, with provenance), manifest.jsonl/csv, job.json and datalist_synthetic.json; a rerun resumes.

        Args:
            bundle: a shipped bundle's name (oct_ldm, ...), a bundle folder or a release archive (.zip).
            output_dir: where the images go.
            class_name: the class, or classes comma-separated (default: every class of the generator).
            num_samples: images per class.
            seed: the job's seed (each image's seed derives from it, its class and its index).
            steps: sampling steps (default: the bundle's).
            guidance_scale: classifier-free guidance scale (default: the bundle's).
            batch_size: images sampled together.
            fmt: png (default), nifti or dicom.
            bit_depth: 8 or 16.
            device: cpu, cuda, cuda:1 ... (default: CUDA when available).
            progress: show progress.
            sampler: a name of the sampler registry, medicraft_monai.schedulers.SAMPLERS (default: the bundle's;
                ``distilled``: oct_ddpm's distilled student (2 steps), its own weights).
        """
        from medicraft_monai.synthesis import generate

        files = generate(
            bundle,
            class_name=_as_list(_text(class_name)) if class_name is not None else None,
            num_samples=num_samples,
            seed=seed,
            steps=steps,
            guidance_scale=guidance_scale,
            output_dir=output_dir,
            batch_size=batch_size,
            fmt=fmt,
            bit_depth=bit_depth,
            device=device,
            progress=progress,
            overrides={"sampler": sampler} if sampler else None,
        )
        print(f"{len(files)} synthetic image(s) in {Path(output_dir) / 'images'}")
        print(f"datalist: {Path(output_dir) / 'datalist_synthetic.json'}")

    def evaluate(
        self,
        real_datalist: str,
        synthetic_datalist: str,
        output_dir: str = "evaluation",
        config: str | None = None,
        image_size: Sequence[int] | None = None,
        crop_height: int | None = None,
        resize_mode: str | None = None,
        max_per_class: int | None = None,
        feature_extractor: str | None = None,
        seeds: int | Sequence[int] | None = None,
        utility: bool = True,
        anatomy: bool = True,
        anatomy_profile: str | None = None,
        epochs: int | None = None,
        tiny: bool = False,
        device: str | None = None,
        overwrite: bool = False,
    ) -> None:
        """Evaluate a synthetic data set against the real one: utility, fidelity, diversity, privacy and anatomy.

        Writes ``report.md`` (tables and figures), ``metrics.json`` (every number) and ``figures/`` to
        ``output_dir``. An interrupted run resumes in the same folder. The same evaluation runs as a bundle:
        ``python -m monai.bundle run --config_file "['bundles/oct_synthesis_eval/configs/common.json','bundles/oct_synthesis_eval/configs/evaluate.json']" ...``.
        Options left out take the values of ``--config`` or the defaults of docs/evaluation.md.

        Args:
            real_datalist: the real datalist (training split: what the generator saw; test split: held-out patients).
            synthetic_datalist: the synthetic datalist (``datalist_synthetic.json`` of ``medicraft multiply``).
            output_dir: where the report goes.
            config: a JSON file of evaluation settings (see docs/evaluation.md); options given here override it.
            image_size: H,W every image is compared at (default: the synthetic images' size).
            crop_height: rows kept around the retina of real images before resizing (default 256; 0: no crop).
            resize_mode: how real images reach the image size: fit (default, pad), crop (same field of view for
                every scan width; use the generator's) or stretch.
            max_per_class: at most this many images per class and set (default 200).
            feature_extractor: "oct" (default: the fixed OCT extractor shipped in bundles/oct_synthesis_eval, the
                same for every run, so Frechet distances compare across runs), "train" (a classifier trained here
                on the real training split), "pixels", a TorchScript file or a bundle folder. The report names it
                with the SHA-256 of its weights.
            seeds: seeds of the utility study (default 0,1,2).
            utility: train the TRTR/TSTR/TRTS classifiers, the imbalance ones (synthetic augmentation against class
                weighting and oversampling) and the real-vs-synthetic detector (--noutility to skip).
            anatomy: run the anatomical plausibility checks (--noanatomy to skip).
            anatomy_profile: "phantom" (default) or "spectralis" (6 mm line scans such as OCT2017).
            epochs: classifier training epochs (default 30).
            tiny: tiny settings that finish in about a minute (a smoke test: the numbers are rough).
            device: cpu, cuda or auto (default).
            overwrite: start afresh in a folder that holds another evaluation.
        """
        from medicraft_monai.evaluation import EvaluationSettings, evaluate_synthesis

        try:
            values = json.loads(Path(config).read_text()) if config else {}
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{config}: not a JSON file of evaluation settings ({e}); see docs/evaluation.md"
            ) from None
        given = {
            "image_size": None if image_size is None else tuple(int(v) for v in _as_list(image_size) or []),
            "crop_height": crop_height,
            "resize_mode": resize_mode,
            "max_per_class": max_per_class,
            "feature_extractor": feature_extractor,
            "utility_seeds": None
            if seeds is None
            else [int(v) for v in _as_list(str(seeds) if isinstance(seeds, int) else seeds) or []],
            "anatomy_profile": anatomy_profile,
            "device": device,
        }
        values.update({k: v for k, v in given.items() if v is not None})
        values.update(
            utility=bool(utility) and values.get("utility", True), anatomy=bool(anatomy) and values.get("anatomy", True)
        )
        settings = EvaluationSettings.tiny(**values) if tiny else EvaluationSettings.from_mapping(values)
        if epochs is not None:
            settings.classifier = {**settings.classifier, "max_epochs": int(epochs)}
        evaluate_synthesis(real_datalist, synthetic_datalist, output_dir, settings, overwrite=overwrite)

    def choose_sampling(
        self,
        datalist: str,
        bundle: str = "oct_ddpm",
        output_dir: str = "sampling_choice",
        guidance: str | Sequence[float] = "1,2,3,5",
        steps: str | Sequence[int] | int = "10",
        seeds: str | Sequence[int] | int = "0,1",
        image_size: Sequence[int] | None = None,
        resize_mode: str = "crop",
        epochs: int = 12,
        device: str = "cpu",
    ) -> None:
        """Choose a generator's guidance scale and step count by TSTR on the real validation split (never test).

        For every setting the generator samples every class (as many images as the real training split), a
        classifier trains on them and is scored on the validation patients; the best setting is printed and written
        with every score to ``output_dir/sampling_choice.json``. Record the choice in the model card and pass it to
        ``medicraft multiply --guidance_scale G --steps N``.

        Args:
            datalist: the real datalist (patient-level training and validation splits).
            bundle: the generator bundle (a shipped name, a folder or a release archive).
            output_dir: where the synthetic sets, classifier runs and the result go.
            guidance: guidance scales to try, comma-separated.
            steps: step counts to try, comma-separated.
            seeds: classifier seeds per setting.
            image_size: H,W of the classifier (default: the generator's image size).
            resize_mode: how real images reach that size (crop, as the shipped generators were trained, fit or
                stretch).
            epochs: classifier training epochs.
            device: where to sample and train.
        """
        from medicraft_monai.evaluation import ClassifierSettings
        from medicraft_monai.evaluation.sampling_choice import choose_sampling
        from medicraft_monai.synthesis import load_generator

        size = _as_list(image_size) if image_size is not None else None
        if size is None:
            size = list(load_generator(bundle, device="cpu").image_shape[1:])
        classifier = ClassifierSettings(
            image_size=tuple(int(v) for v in size),
            max_epochs=int(epochs),
            device=device,
            overrides={"resize_mode": resize_mode},
        )
        result = choose_sampling(
            datalist,
            bundle,
            output_dir,
            guidance_scales=[float(v) for v in _numbers(guidance)],
            steps=[int(v) for v in _numbers(steps)],
            seeds=[int(v) for v in _numbers(seeds)],
            classifier=classifier,
            device=device,
        )
        print(f"TRTR on validation: {result['trtr']['mean']:.3f}")
        for row in result["settings"]:
            t = row["tstr"]
            print(f"guidance {row['guidance_scale']:g}, {row['steps']} steps: TSTR {t['mean']:.3f} +- {t['std']:.3f}")
        chosen = result["chosen"]
        print(
            f"chosen: guidance {chosen['guidance_scale']:g}, {chosen['steps']} steps ({output_dir}/sampling_choice.json)"
        )

    def label_efficiency(
        self,
        datalist: str,
        output_dir: str = "label_efficiency",
        fractions: str | Sequence[float] = (0.1, 0.25, 0.5, 1.0),
        seeds: str | Sequence[int] = (0, 1, 2),
        image_size: Sequence[int] = (64, 128),
        pretrain_epochs: int = 20,
        finetune_epochs: int = 10,
        pretrained_ckpt: str | None = None,
        max_per_class: int | None = None,
        device: str = "cpu",
    ) -> None:
        """Does context-restoration pretraining save labels? Pretrained vs from-scratch classifiers with a fraction
        of the training labels, several seeds; writes label_efficiency.json/.md/.png (see docs/context_restoration.md).

        The same experiment runs as ``bundles/oct_context_restoration/configs/label_efficiency.json``.

        Args:
            datalist: a datalist JSON with patient-level splits, or a data folder (a folder per class).
            output_dir: where the table, the plot and the pretrained network go (a rerun resumes).
            fractions: label fractions, e.g. 0.1,0.25,0.5,1.
            seeds: fine-tuning seeds, e.g. 0,1,2.
            image_size: H,W the B-scans are resized to.
            pretrain_epochs: context-restoration pretraining epochs.
            finetune_epochs: classification fine-tuning epochs per run.
            pretrained_ckpt: use this pretrained network instead of pretraining here.
            max_per_class: at most this many training images per class (a quicker run).
            device: cpu or cuda.
        """
        from medicraft_monai.evaluation.label_efficiency import run_label_efficiency

        run_label_efficiency(
            datalist,
            output_dir,
            fractions=[
                float(v) for v in _as_list(fractions if not isinstance(fractions, float) else str(fractions)) or []
            ],
            seeds=[int(v) for v in _as_list(_text(seeds)) or []],
            image_size=[int(v) for v in _as_list(image_size) or []],
            pretrain_epochs=pretrain_epochs,
            finetune_epochs=finetune_epochs,
            pretrained_ckpt=pretrained_ckpt,
            max_per_class=max_per_class,
            device=device,
        )
        print(f"label efficiency table: {Path(output_dir) / 'label_efficiency.md'}")

    def demo(
        self,
        output_dir: str = "demo_output",
        data: str | None = None,
        exams: int | None = None,
        seed: int = 0,
        minutes: float | None = None,
        epochs: int | None = None,
        steps: int | None = None,
        scratch: bool = True,
        train: bool = True,
        quick: bool = False,
    ) -> None:
        """The main job: build (or read) an OCT data set, fine-tune the shipped generator, multiply, evaluate, report.

        Without ``--data`` it uses the built-in OCT phantom (an imbalanced set of healthy, benign and melanoma
        exams, every class in every split). It splits the data by patient, fine-tunes the shipped
        ``bundles/oct_ddpm`` weights to the data's classes on the CPU (``configs/finetune.json``), trains the same
        network from scratch for the same time for comparison, balances the training split with synthetic images,
        evaluates them on held-out patients and writes ``report.md``, ``samples.png`` and ``summary.json`` to
        ``output_dir``.

        Args:
            output_dir: where everything is written.
            data: your data set (a folder per class, a CSV or a DICOM folder); default: the phantom.
            exams: phantom exams to generate when no data is given (default 30).
            seed: random seed for the phantom, the split, training and sampling.
            minutes: training budget of each route in minutes (default 3).
            epochs: at most this many training epochs per route (default 500: the budget stops first).
            steps: sampling steps (default: the oct_ddpm bundle's sampler and steps).
            scratch: also train from scratch for comparison (--noscratch: fine-tune only).
            train: train and multiply (--notrain: the data stage and the report only).
            quick: tiny settings that finish in about a minute (a smoke test: the pictures are noise).
        """
        from medicraft_monai.demo import DemoSettings, run_demo

        settings = DemoSettings.quick() if quick else DemoSettings()
        if exams is not None:
            settings.exams = int(exams)
        if minutes is not None:
            settings.train_minutes = float(minutes)
        if epochs is not None:
            settings.max_epochs = int(epochs)
        if steps is not None:
            settings.sampling_steps = int(steps)
        settings.compare_scratch = bool(scratch)
        settings.train = bool(train)
        run_demo(output_dir, data=data, seed=seed, settings=settings)

    def info(self, file: str | None = None) -> None:
        """Print what the reader sees in an image file, or (without a file) the versions of medicraft_monai and of
        the libraries it runs on.

        Args:
            file: an image file (PNG, JPEG, TIFF, NIfTI or DICOM): its size, bit depth, frames, laterality, plane
                angles, pixel spacing and, for DICOM, the SOP class.
        """
        if file is not None:
            from medicraft_monai.data.io import describe_image

            for key, value in describe_image(file).items():
                print(f"{key}: {value}")
            return
        import monai
        import torch

        import medicraft_monai

        print(f"medicraft_monai {medicraft_monai.__version__}")
        print(f"monai {monai.__version__}, torch {torch.__version__}, cuda available: {torch.cuda.is_available()}")


class LabelCommands:
    """The MONAI Label app (see docs/label.md)."""

    def app_dir(self) -> str:
        """Print the app folder to give ``monailabel start_server --app``."""
        from medicraft_monai.label import app_dir

        return str(app_dir())


class ReviewCommands:
    """Expert reviews of synthetic images made in MONAI Label (see docs/label.md)."""

    def export(self, studies: str, output_dir: str, rule: str = "unanimous", anatomy: bool = True) -> None:
        """Turn the verdicts into a datalist of accepted images and a report (acceptance per class and anomaly, and
        the readers' accuracy in the blinded reading, real or synthetic, with its 95% confidence interval).

        Args:
            studies: the MONAI Label studies folder the reviews were made in.
            output_dir: where ``accepted_datalist.json`` and the review report go.
            rule: how several reviewers' verdicts combine: unanimous, majority or any.
            anatomy: compare the verdicts with the automated anatomy checks.
        """
        from medicraft_monai.label import export_reviews

        result = export_reviews(studies, output_dir, rule=rule, anatomy=anatomy)
        for key in ("datalist", "report_md", "report_json"):
            print(f"{key}: {result[key]}")
        if result["refused"]:
            print(f"refused: {len(result['refused'])} image(s), not exported (see {result['report_json']})")
        turing = result["turing"]
        if turing["trials"]:
            low, high = turing["ci95"]
            print(
                f"blinded reading: {turing['correct']}/{turing['trials']} right ({100 * turing['accuracy']:.1f}%, "
                f"95% CI {100 * low:.1f}-{100 * high:.1f}%; ~50% = indistinguishable)"
            )


def _bundle_folder(bundle: str) -> Path:
    """A bundle given as a shipped bundle's name, a folder or a release archive, as a folder."""
    from medicraft_monai.bundles import resolve_bundle

    return resolve_bundle(bundle)


def _json_words(value):
    """Fire reads JSON's ``true``/``false``/``null`` inside a list or dict as text; make them the values."""
    if isinstance(value, dict):
        return {k: _json_words(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_words(v) for v in value]
    return {"true": True, "false": False, "null": None}.get(value, value) if isinstance(value, str) else value


class BundleCommands:
    """MONAI bundles as the model zoo takes them (see docs/bundles.md)."""

    def verify(
        self,
        bundle: str,
        schema: str | None = None,
        mode: str = "full",
        model_info: str | None = None,
        device: str = "cpu",
    ) -> None:
        """Run the model zoo's checks (ci/verify_bundle.py) on a bundle and print a pass/fail table; exit 1 on a fail.

        Args:
            bundle: a shipped bundle's name (oct_ddpm, ...) or a bundle folder.
            schema: the metadata schema file (meta_schema_20240725.json); without it that check is n/a (nothing is
                downloaded).
            mode: "min" (files, large files, version, schema) or "full" (also network shapes, TorchScript, weights).
            model_info: the model zoo's model_info.json, to refuse a version that is released already.
            device: where the network checks run.
        """
        from medicraft_monai.networks.verification import format_checks, verify_bundle

        folder = _bundle_folder(bundle)
        checks = verify_bundle(folder, schema=schema, mode=mode, model_info=model_info, device=device)
        print(format_checks(folder.name, checks))
        if not all(c.passed for c in checks):
            sys.exit(1)

    def pack(self, bundle: str, output_dir: str, overwrite: bool = False, source: str | None = None) -> None:
        """Write a bundle's release archive <name>_v<version>.zip and its model_info.json entry (MD5 checksum).

        Install it with ``python -m monai.bundle download --name NAME --url file:///.../NAME_vX.zip``.

        Args:
            bundle: a shipped bundle's name (oct_ddpm, ...) or a bundle folder.
            output_dir: where the archive and model_info.json go.
            overwrite: replace an existing archive of the same name and version.
            source: the URL the archive will be published at (default: its path), for model_info.json.
        """
        from medicraft_monai.networks.release import pack_bundle

        packed = pack_bundle(_bundle_folder(bundle), output_dir, overwrite=overwrite, source=source)
        print(f"{packed['archive']} ({len(packed['files'])} files, md5 {packed['checksum']})")
        print(f"{packed['model_info']}: entry {packed['entry']}")

    def export(
        self,
        ckpt_path: str,
        output_dir: str,
        bundle: str = "oct_ddpm",
        override: str | dict | Sequence[str] | None = None,
        version: str = "0.1.0",
        overwrite: bool = False,
        **settings,
    ) -> None:
        """Make trained weights a self-contained bundle: configs with the settings they were trained with, the
        weights, diffusion.json, metadata and a model card, so nothing needs to be overridden to use them.

        ``medicraft bundle export --from oct_ddpm --ckpt_path demo_output/model/model.pt --output_dir my_oct_ddpm
        --channels "[32,64,64]" --image_size "[64,128]"`` (settings as ``--KEY VALUE``, as ``python -m monai.bundle
        run`` takes them, or ``--override KEY=VALUE`` / ``--override '{"KEY": VALUE, ...}'``).

        Args:
            ckpt_path: the trained weights (the model.pt training wrote; diffusion.json, latent.json and
                autoencoder.pt beside it are copied too).
            output_dir: the new bundle folder (new or empty).
            bundle: the bundle trained (a shipped bundle's name or a folder); also ``--from``.
            override: settings the weights were trained with, KEY=VALUE or a JSON object.
            version: the new bundle's version.
            overwrite: replace a bundle an earlier export wrote in output_dir.
        """
        from medicraft_monai.networks.release import export_bundle, parse_overrides

        source = settings.pop("from", None) or bundle
        given = _json_words({**parse_overrides(override), **settings})
        made = export_bundle(_bundle_folder(source), ckpt_path, output_dir, given, version=version, overwrite=overwrite)
        print(f"bundle written to {made['bundle_root']} ({len(made['files'])} files)")
        print(f"use it: medicraft multiply DATALIST OUTPUT_DIR --bundle_root {made['bundle_root']}")


class ZooCommands:
    """The bundles at hand (shipped, folders, release archives) and their measured numbers (see docs/bundles.md)."""

    def list(
        self,
        paths: str | Sequence[str] | None = None,
        task: str | None = None,
        classes: str | Sequence[str] | None = None,
        sort_by: str | None = None,
        descending: bool | None = None,
        as_json: bool = False,
    ) -> None:
        """List every bundle at hand with its task, classes, image size, version and eval_metrics; filter and rank.

        A bundle whose metadata reports no numbers is listed as unmeasured and never ranked.

        Args:
            paths: bundle folders, release archives (.zip) or folders holding them, comma-separated, besides the
                shipped bundles.
            task: generation, classification, restoration, evaluation, or words of the metadata's task.
            classes: class names the bundle must all know, comma-separated.
            sort_by: an eval_metrics name (nested names joined by /): bundles reporting it first, best first.
            descending: larger values first (default: smaller first only for distances, losses, errors and
                memorisation).
            as_json: print the entries as JSON.
        """
        from medicraft_monai.registry import find, format_table

        entries = find(task, _as_list(classes), sort_by, paths=_as_list(paths), descending=descending)
        if as_json:
            print(json.dumps([e.summary() for e in entries], indent=2))
        else:
            print(format_table(entries, sort_by))

    def info(self, name: str, paths: str | Sequence[str] | None = None) -> None:
        """Print a bundle's summary: version, task, classes, image size, every eval_metric, its model card's start.

        Args:
            name: a shipped bundle's name, a name among --paths, a bundle folder or a release archive.
            paths: bundle folders, release archives or folders holding them, comma-separated.
        """
        from medicraft_monai.registry import format_info, info

        print(format_info(info(name, _as_list(paths))))


def _write_accepted(result: dict, reviews: str) -> None:
    """Keep only expert-accepted synthetic images in multiply's datalists (written beside them as *_accepted)."""
    from medicraft_monai.data.datalist import write_datalist
    from medicraft_monai.label import filter_accepted

    for key in ("datalist_synthetic", "datalist_combined"):
        path = Path(result[key])
        kept = filter_accepted(path, reviews)
        target = write_datalist(path.with_name(path.stem + "_accepted.json"), kept)
        print(f"accepted only: {target} ({kept.get('review_filter', {})})")


#: option texts that name values defined elsewhere; :func:`_document_defaults` replaces them by the values
_SAMPLER_TEXT = "a name of the sampler registry, medicraft_monai.schedulers.SAMPLERS"
_STEPS_TEXT = "the oct_ddpm bundle's sampler and steps"


def _samplers() -> str:
    from medicraft_monai.schedulers import SAMPLERS

    return f"one of {', '.join(SAMPLERS)} (medicraft_monai.schedulers.SAMPLERS)"


def _bundle_sampling(name: str = "oct_ddpm") -> str:
    """The sampler and step count that the bundle's inference configs set (their JSON merged in order, and parsed)."""
    from monai.bundle import ConfigParser

    from medicraft_monai.bundles import bundle_path, config_files

    parser = ConfigParser()
    parser.read_config([str(p) for p in config_files(bundle_path(name), "inference.json")])
    sampler, steps = parser.get_parsed_content("sampler"), parser.get_parsed_content("num_inference_steps")
    return f"{sampler} with {steps} steps, as the {name} bundle sets them"


def _document_defaults(args: Sequence[str]) -> None:
    """Write the values that other modules define (the sampler registry, a bundle's defaults) into the option texts
    of the command about to run, so its ``--help`` names them as they are. Only for that command: importing the
    sampler registry takes seconds, which ``medicraft --help`` should not spend."""
    command = _command_of(args)
    fills = {
        "multiply": (MedicraftCLI.multiply, _SAMPLER_TEXT, _samplers),
        "generate": (MedicraftCLI.generate, _SAMPLER_TEXT, _samplers),
        "demo": (MedicraftCLI.demo, _STEPS_TEXT, _bundle_sampling),
    }
    if command in fills:
        method, text, values = fills[command]
        if method.__doc__ and text in method.__doc__:
            method.__doc__ = method.__doc__.replace(text, values())


#: library parameters whose command-line option has another name, per command (the rest keep their names)
_OPTION_ALIASES = {
    "phantom": {"n_exams": "exams", "n_planes": "planes", "defects": "defect"},
    "multiply": {"overrides": "sampler"},
}


def _command_of(args: Sequence[str]) -> str | None:
    return next((a for a in args if not a.startswith("-")), None)


def _with_option_names(message: str, command: str | None) -> str:
    """Name the command-line options (``--exams``) where a library message names its Python parameters
    (``n_exams``): every parameter of the command with a default, and its aliases, where it is the subject of a
    "must" clause or, when it holds an underscore, anywhere as a word of its own (never inside a path)."""
    import inspect

    method = getattr(MedicraftCLI, command or "", None)
    if not callable(method):
        return message
    options = {
        name: name
        for name, param in inspect.signature(method).parameters.items()
        if name != "self" and param.default is not inspect.Parameter.empty
    }
    options.update(_OPTION_ALIASES.get(command or "", {}))
    word = r"(?<![\w/.\-]){}(?![\w/.\-])"

    def subject(match: re.Match) -> str:
        text = match.group(2)
        for name, option in options.items():
            text = re.sub(word.format(re.escape(name)), f"--{option}", text)
        return match.group(1) + text + match.group(3)

    message = re.sub(r"(^|[;:(]\s*)([\w ,]+?)(\s+must\b)", subject, message)
    for name, option in options.items():
        if "_" in name:
            message = re.sub(word.format(re.escape(name)), f"--{option}", message)
    return message


def _is_flag(token: str) -> bool:
    """Whether python-fire reads ``token`` as a flag (``--name``, ``-n``; not a negative number)."""
    return token.startswith("--") or re.match(r"^-[a-zA-Z]", token) is not None


def _takes_switch(param) -> bool:
    """Whether an option is a switch (``--flag`` / ``--noflag``): its default or its annotation is a bool."""
    return isinstance(param.default, bool) or "bool" in str(param.annotation)


def _suggest(word: str, choices: Sequence[str], prefix: str = "") -> str:
    """'; did you mean X?' for the closest of ``choices`` (difflib), else the list of choices."""
    import difflib

    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {prefix}{close[0]}?"
    return f"; the choices are {', '.join(prefix + c for c in choices)}"


def _check_command_line(cli: object, args: Sequence[str]) -> None:
    """Refuse, before anything runs, a command line that python-fire would misread: an unknown command, an option
    the command does not have (``--exam`` for ``--exams``: fire would run the command with the default and then
    print "Could not consume arg"), an option that needs a value given none (fire would pass ``True``), a missing
    required argument or one argument too many. Each is a
    :class:`ValueError` naming the command, the option and the closest valid one. Options are those of the command's
    signature as fire reads them (``--name value``, ``--name=value``, ``--flag``, ``--noflag``, ``--some-name``, a
    one-letter ``-n`` when one option starts with it); a command taking ``**settings`` takes any option, and
    ``--help`` (``-h`` where no option starts with h) is left to fire."""
    import inspect

    args = list(args)
    if "--" in args:  # what follows a bare -- are fire's own flags
        args = args[: args.index("--")]
    component, path, i = cli, [], 0
    while i < len(args) and not inspect.isroutine(component):
        word = args[i]
        if _is_flag(word) or word == "-":
            return  # options of a group, fire's separator: fire's to answer
        commands = sorted(n for n in dir(component) if not n.startswith("_"))
        if word.replace("-", "_") not in commands:
            where = " ".join(path)
            raise ValueError(
                f"{where + ': ' if where else ''}unknown command {word!r}{_suggest(word, commands)} "
                f"(medicraft {where + ' ' if where else ''}--help lists them)"
            )
        component, i = getattr(component, word.replace("-", "_")), i + 1
        path.append(word)
    if not inspect.isroutine(component):
        return  # a group without its command: fire prints the group's help
    params = inspect.signature(component).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    names, where = list(params), " ".join(path)
    required = [n for n in names if params[n].default is inspect.Parameter.empty]
    usage = f"medicraft {where} {' '.join(n.upper() for n in required)} [--option VALUE ...]".replace("  ", " ")
    given: set[str] = set()
    positional: list[str] = []
    rest = args[i:]
    rest = rest[: rest.index("-")] if "-" in rest else rest  # fire's separator: what follows acts on the result
    k = 0
    while k < len(rest):
        token = rest[k]
        if not _is_flag(token):
            positional.append(token)
            k += 1
            continue
        key = token.lstrip("-").split("=", 1)[0].replace("-", "_")
        alone = "=" not in token and (k + 1 == len(rest) or _is_flag(rest[k + 1]))
        negated = key not in names and alone and key.startswith("no") and key[2:] in names
        if negated:
            key = key[2:]
        elif key not in names and len(key) == 1 and [n[0] for n in names].count(key) == 1:
            key = next(n for n in names if n[0] == key)
        elif key in ("help", "h") and key not in names:
            return  # fire shows the command's help
        elif key not in names:
            flag = token.split("=", 1)[0]
            raise ValueError(
                f"{where}: unknown option {flag}{_suggest(key, names, '--')} (medicraft {where} --help lists the options)"
            )
        if alone and not negated and not _takes_switch(params[key]):  # fire would pass True
            raise ValueError(f"{where}: --{key} needs a value (--{key} VALUE, or --{key}=VALUE)")
        given.add(key)
        k += 1 if alone or "=" in token else 2
    free = [n for n in names if n not in given]
    if len(positional) > len(free):
        raise ValueError(f"{where}: unexpected argument {positional[len(free)]!r} (usage: {usage})")
    missing = [n for n in free if n in required][len(positional) :]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(n.upper() for n in missing)} (usage: {usage})")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``medicraft`` console script.

    Problems with the user's data (:class:`~medicraft_monai.data.errors.OCTDataError`) and bad arguments end the
    command with a one-line message naming the file and the reason, and exit status 2, instead of a traceback;
    several problems found together (:class:`~medicraft_monai.data.errors.DataProblems`) give the first and name
    the others. The message names the command-line options (``--exams``), not the library's parameters
    (``n_exams``); an unknown command or option, a missing or an extra argument is refused before anything runs,
    with the closest valid name (:func:`_check_command_line`). Ctrl-C ends it with one line and exit status 130 (the commands write atomically, so a rerun
    resumes). Set ``MEDICRAFT_DEBUG=1`` to see the traceback.
    """
    from medicraft_monai.data.errors import DataProblems, OCTDataError

    args = sys.argv[1:] if argv is None else list(argv)
    cli = MedicraftCLI()
    try:
        _check_command_line(cli, args)
        _document_defaults(args)
        fire.Fire(cli, command=args, name="medicraft")
    except (OCTDataError, FileNotFoundError, ValueError) as err:
        if os.environ.get("MEDICRAFT_DEBUG"):
            raise
        text = err.summary if isinstance(err, DataProblems) else str(err)
        text = " ".join(line.strip() for line in text.splitlines() if line.strip())  # one line, always
        print(f"medicraft: error: {_with_option_names(text, _command_of(args))}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        if os.environ.get("MEDICRAFT_DEBUG"):
            raise
        print(
            f"medicraft: interrupted; no partial file was left, run the same command again to resume "
            f"(medicraft {_command_of(args) or ''})",
            file=sys.stderr,
        )
        sys.exit(130)


if __name__ == "__main__":
    main()
