"""Helpers for tests of the MONAI Label app: tiny bundles' weights, the MONAI Label environment and a real server.

The server runs the standard ``monailabel start_server`` of ``.venv-label`` (created with
``scripts/setup_label_env.sh`` when missing) on 127.0.0.1 and a free port, in its own process group, and is stopped
by that process group's id.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import requests
import torch

from medicraft_monai.engines.records import DIFFUSION_SETTINGS_FILE, DiffusionSettingsWriter
from medicraft_monai.networks import bundle_parser, randomise_zero_weights

REPO = Path(__file__).resolve().parents[1]
LABEL_VENV = Path(os.environ.get("MEDICRAFT_LABEL_VENV", REPO / ".venv-label"))
GENERATOR_BUNDLE = REPO / "bundles" / "oct_ddpm"
CLASSIFIER_BUNDLE = REPO / "bundles" / "oct_classifier"
CLASSES = ["CNV", "DME", "DRUSEN", "NORMAL"]

TINY_GENERATOR = {
    "class_names": CLASSES,
    "image_size": [32, 64],
    "channels": [8, 16],
    "attention_levels": [False, False],
    "num_res_blocks": 1,
    "num_head_channels": 8,
    "norm_num_groups": 8,
    "num_inference_steps": 3,
}
TINY_CLASSIFIER = {
    "class_names": CLASSES,
    "image_size": [32, 64],
    "init_features": 8,
    "growth_rate": 4,
    "block_config": [2, 2],
    "bn_size": 2,
}


def ensure_label_venv(timeout: float = 1200) -> Path:
    """``.venv-label`` with MONAI Label, created by the project's script when missing (fast when present)."""
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "setup_label_env.sh"), str(LABEL_VENV)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0 or not (LABEL_VENV / "bin" / "monailabel").is_file():
        pytest.fail(f"setup_label_env.sh failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return LABEL_VENV


def make_weights(bundle: Path, overrides: Mapping[str, Any], path: Path, seed: int = 0) -> Path:
    """Random weights for ``bundle``'s ``network_def`` with ``overrides`` (zero-initialised layers re-drawn).

    A generator bundle's weights get the ``diffusion.json`` training writes beside them (its ``diffusion_settings``),
    which fine-tuning needs to start from them.
    """
    parser = bundle_parser(bundle, overrides=overrides)  # common.json layered under inference.json
    torch.manual_seed(seed)
    net = randomise_zero_weights(parser.get_parsed_content("network_def"), seed=seed, std=0.1)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    if "diffusion_settings" in parser:
        DiffusionSettingsWriter(
            path.parent / DIFFUSION_SETTINGS_FILE, parser.get_parsed_content("diffusion_settings")
        )()
    return path


def compact_json(obj: Mapping[str, Any]) -> str:
    """``obj`` as JSON without spaces (the monailabel launcher splits ``--conf`` values at spaces)."""
    return json.dumps(obj, separators=(",", ":"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LabelServer:
    """A running ``monailabel start_server`` (use :meth:`start`, then :meth:`stop`)."""

    def __init__(self, studies: Path, conf: Mapping[str, str], log: Path) -> None:
        self.studies = studies
        self.conf = dict(conf)
        self.log_path = log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> LabelServer:
        venv = ensure_label_venv()
        env = {
            **os.environ,
            "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            "MONAILABEL_PYEXE": str(venv / "bin" / "python"),
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "MONAI_LABEL_TRACKING_ENABLED": "false",
            "MONAI_LABEL_AUTO_UPDATE_SCORING": "false",
            "MONAI_LABEL_SESSIONS": "false",
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("VIRTUAL_ENV", None)
        cmd = [str(venv / "bin" / "monailabel"), "start_server", "--app", str(self.app_dir()), "--studies",
               str(self.studies), "--host", "127.0.0.1", "--port", str(self.port)]  # fmt: skip
        for key, value in self.conf.items():
            cmd += ["--conf", key, value]
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                pytest.fail(f"MONAI Label server exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                if requests.get(f"{self.url}/info/", timeout=5).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        pytest.fail(f"MONAI Label server did not answer within {timeout} s:\n{self.tail()}")

    @staticmethod
    def app_dir() -> Path:
        from medicraft_monai.label import app_dir

        return app_dir()

    def tail(self, n: int = 6000) -> str:
        try:
            return self.log_path.read_text()[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the server's process group (SIGTERM, then SIGKILL) by its id."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        try:  # workers the server started (fine-tuning) are in the same group
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.log.close()

    # ------------------------------------------------------------------------------------------- client calls
    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(f"{self.url}{path}", timeout=kwargs.pop("timeout", 120), **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.post(f"{self.url}{path}", timeout=kwargs.pop("timeout", 300), **kwargs)

    def put(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.put(f"{self.url}{path}", timeout=kwargs.pop("timeout", 120), **kwargs)

    def infer(self, model: str, image: str, params: Mapping[str, Any], output: str = "json") -> requests.Response:
        """``POST /infer/{model}`` as ``MONAILabelClient.infer`` sends it (params as a multipart form field)."""
        return self.post(
            f"/infer/{model}",
            params={"image": image, "output": output},
            files={"params": (None, json.dumps(dict(params)))},
        )

    def next_sample(self, strategy: str, params: Mapping[str, Any]) -> requests.Response:
        return self.post(f"/activelearning/{strategy}", json=dict(params))

    def submit_review(self, image: str, verdict: Any, raw: bytes | None = None) -> requests.Response:
        """``PUT /datastore/label?tag=review`` with the verdict JSON as the label file (``MONAILabelClient.save_label``)."""
        body = raw if raw is not None else json.dumps(verdict).encode()
        return self.put(
            "/datastore/label",
            params={"image": image, "tag": "review"},
            files={"label": ("verdict.json", body, "application/json"), "params": (None, "{}")},
        )


def copy_real_images(paths: Sequence[Path], studies: Path) -> list[str]:
    """Copy real B-scans into a temporary studies folder (never into the repository); returns their image ids."""
    studies.mkdir(parents=True, exist_ok=True)
    ids = []
    for p in paths:
        shutil.copyfile(p, studies / p.name)
        ids.append(p.name.rsplit(".", 1)[0])
    return ids
