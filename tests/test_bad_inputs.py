"""The bad-input corpus (tests/_bad_inputs.py) through the real ``medicraft`` command: every class of bad input
(corrupt, truncated, zero-byte, unsupported format, wrong modality, 3-D volume, colour image, NaN, unknown label,
unreadable, output equals input, interrupted write, mistyped option) given to each command that takes it (datalist,
phantom, multiply, evaluate, info, review export).

Each case must end with exit status 2, a one-line message ``medicraft: error: ...`` that is the last line of stderr
and names the file (or the option) and the problem, no traceback, and every file that existed before with the same
bytes. The counts "bad inputs tried / handled with a
clear error / files lost" are printed at the end (docs/datalists.md quotes them).
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from _bad_inputs import KINDS, Case, build_corpus, one_per_class_datalist, tree_hashes
from _subprocess import run_group
from test_multiply import make_tiny_bundle

MEDICRAFT = [sys.executable, "-c", "from medicraft_monai.cli import main; main()"]
WORKERS = 2  # the CI machines have 2 cores; the cases are independent processes


@dataclass
class Outcome:
    case: Case
    returncode: int
    stderr: str
    lost: list[str]

    @property
    def last(self) -> str:
        lines = self.stderr.strip().splitlines()
        return lines[-1] if lines else ""

    def problems(self) -> list[str]:
        """What is wrong with how the command handled the bad input (empty when it is handled as it must be)."""
        case, out = self.case, []
        if self.returncode != 2:
            out.append(f"exit status {self.returncode}, not 2")
        if "Traceback" in self.stderr:
            out.append("a traceback")
        if "medicraft: error: " not in self.stderr:
            out.append("no 'medicraft: error:' message")
        elif not self.last.startswith("medicraft: error: "):
            out.append("the message is not one line (the last line is not 'medicraft: error: ...')")
        if case.names not in self.last:
            out.append(f"the last line does not name {case.names!r}")
        missing = [w for w in case.words if w not in self.last]
        if missing:
            out.append(f"the last line does not say {missing}")
        if self.lost:
            out.append(f"{len(self.lost)} file(s) lost or changed: {self.lost[:3]}")
        return [f"{case.id} ({case.what}): {'; '.join(out)}\n    last line: {self.last[:400]}"] if out else []


def _run(case: Case, root: Path) -> tuple[int, str]:
    proc = run_group([*MEDICRAFT, *case.args], timeout=300, cwd=root)
    return proc.returncode, proc.stderr


def _touches(case: Case, path: str) -> bool:
    """Whether ``path`` is one of the paths the case's command line names, or lies under one."""
    return any(path == a or path.startswith(a.rstrip("/") + "/") for a in case.args if a.startswith("/"))


@dataclass
class Corpus:
    by_kind: dict[str, list[Outcome]]
    line: str  # "bad inputs tried: N / handled with a clear error: N / files lost: N"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, oct2017_dir: Path, oct2017_manifest, request) -> Corpus:
    """Every case run once (two at a time); the whole corpus is hashed before and after, and a file lost or changed
    is charged to the cases whose command line names it or a folder above it."""
    root = tmp_path_factory.mktemp("bad_inputs")
    bundle = make_tiny_bundle(root / "bundle")
    real = one_per_class_datalist(root / "real" / "datalist.json", oct2017_dir, oct2017_manifest)
    cases = build_corpus(root / "corpus", oct2017_dir, bundle, real)
    before = tree_hashes(root)
    with ThreadPoolExecutor(WORKERS) as pool:
        runs = list(pool.map(lambda c: _run(c, root), cases))
    after = tree_hashes(root)
    lost = [p for p, h in before.items() if after.get(p) != h]
    result: dict[str, list[Outcome]] = {k: [] for k in KINDS}
    for case, (rc, err) in zip(cases, runs):
        result[case.kind].append(Outcome(case, rc, err, [p for p in lost if _touches(case, p)]))
    clear = sum(not o.problems() for v in result.values() for o in v)
    line = f"bad inputs tried: {len(cases)} / handled with a clear error: {clear} / files lost: {len(lost)}"
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # shown in every run, not only with -s
            reporter.write_line("\n" + line)
    for outcome in (o for v in result.values() for o in v):  # shown with -s or when a case fails
        print(f"{outcome.case.id}: exit {outcome.returncode}: {outcome.last}")
    print(line)
    return Corpus(result, line)


@pytest.mark.parametrize("kind", KINDS)
def test_every_command_refuses_the_bad_input_clearly_and_keeps_every_file(kind: str, corpus: Corpus) -> None:
    assert corpus.by_kind[kind], f"no case of {kind}"
    problems = [p for outcome in corpus.by_kind[kind] for p in outcome.problems()]
    assert not problems, "\n".join(problems)


def test_the_docs_quote_the_counts_of_this_corpus(corpus: Corpus) -> None:
    """docs/datalists.md states the line this run measured (so a case added or a file lost shows up there)."""
    docs = " ".join((Path(__file__).parents[1] / "docs" / "datalists.md").read_text().split())
    assert f"**{corpus.line}**" in docs, f"docs/datalists.md should say **{corpus.line}**"
