"""Switches: ``medicraft_monai.utils.flag`` and the one ``switches`` entry per switch in the bundle configs.

``--resume false`` on the ``monai.bundle`` command line passes the string ``"false"``; every bundle reads a switch
through ``flag`` exactly once (its ``switches`` entry) and the rest of the configs use ``@switches#<key>``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from monai.bundle import ConfigParser
from test_bundles import OVERLAYS

from medicraft_monai.utils import flag

REPO = Path(__file__).resolve().parents[1]
BUNDLES = sorted(p for p in (REPO / "bundles").iterdir() if (p / "configs" / "common.json").is_file())


def test_flag_reads_command_line_switches() -> None:
    assert [flag(v) for v in (True, "true", "True", "1", 1, "yes")] == [True] * 6
    assert [flag(v) for v in (False, "false", "False", "0", 0, None, "no")] == [False] * 7
    with pytest.raises(ValueError, match="not a true/false switch"):
        flag("maybe")


def _layered(bundle: Path) -> list[list[Path]]:
    """Every runnable config of a bundle on top of common.json (overlays on top of train.json too)."""
    configs = bundle / "configs"
    out = []
    for p in sorted(configs.glob("*.json")):
        if p.name in ("common.json", "metadata.json") or "imports" in json.loads(p.read_text()):
            continue  # a standalone config (multiply.json, label_efficiency.json) has imports of its own
        files = [configs / "common.json", p]
        base = OVERLAYS.get(p.name)
        if base and (configs / base).is_file():
            files.insert(1, configs / base)
        out.append(files)
    return out


@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_each_switch_is_read_once_and_command_line_spellings_work(bundle: Path) -> None:
    for files in _layered(bundle):
        texts = {p.name: p.read_text() for p in files}
        for name, text in texts.items():
            raw = json.loads(text)
            own = {**raw.get("switches", {}), **raw.get("+switches", {})}
            calls = text.count("flag(")
            assert calls == len(own), f"{bundle.name}/{name}: flag() outside the switches entry ({calls} calls)"
        parser = ConfigParser()
        parser.read_config([str(p) for p in files])
        switches = parser.get("switches") or {}
        for key in switches:
            if isinstance(parser.get(key), list):  # a list of switches, e.g. attention_levels
                parser[key] = ["false", "True"] + [True] * (len(parser.get(key)) - 2)
                assert parser.get_parsed_content(f"switches#{key}")[:2] == [False, True]
                continue
            for spelt, wanted in (("false", False), ("true", True), ("False", False), (True, True), ("0", False)):
                parser[key] = spelt
                got = parser.get_parsed_content(f"switches#{key}", lazy=False)
                assert got is wanted, f"{bundle.name}/{files[-1].name}: --{key} {spelt} gave {got!r}"
