"""The rooms of medicraft_monai and the direction of their imports (docs/architecture.md, DESIGN.md's Layout).

Every module of the package is parsed (an AST walk: imports inside functions count too, they are cycles all the
same) and each ``medicraft_monai.<room>`` it imports must lie on a lower level than its own room. Rooms on one
level do not import each other. A new room must be placed in :data:`LEVELS` before it can be imported.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "medicraft_monai"

#: The rule: a room uses only rooms on lower levels (lowest first). ``ssl`` (self-supervised context restoration:
#: its data, networks, handlers and fine-tuning) is an extra room beside ``synthesis``: it builds on the engines'
#: handlers and the inferers, and the evaluation's label-efficiency study builds on it. ``visualize`` (image grids,
#: no imports of the package) is a shared helper beside ``utils``. ``registry`` (the bundles at hand and their
#: metadata, for ``medicraft zoo``) reads bundles through ``bundles`` only, beside ``data``.
LEVELS: tuple[tuple[str, ...], ...] = (
    ("utils", "visualize"),
    ("bundles",),
    ("data", "registry"),
    ("transforms",),
    ("networks",),
    ("schedulers",),
    ("inferers",),
    ("metrics",),
    ("engines",),
    ("synthesis", "ssl"),
    ("evaluation",),
    ("label", "deploy"),
    ("demo",),
    ("cli",),
)
LEVEL = {room: i for i, rooms in enumerate(LEVELS) for room in rooms}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The ``medicraft_monai`` modules (and names) that the file imports, relative imports resolved."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "medicraft_monai" or name.startswith("medicraft_monai.")}


def _room(module: str) -> str | None:
    """``medicraft_monai.data.io`` -> ``data``; the package itself (only its version) -> ``None``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_room_is_placed() -> None:
    rooms = {_room(_module_name(p)) for p in MODULES} - {None}
    assert rooms <= set(LEVEL), f"rooms not placed in LEVELS: {sorted(rooms - set(LEVEL))}"


def test_the_package_root_imports_no_room() -> None:
    assert {_room(m) for m in _imports(PACKAGE / "__init__.py")} <= {None}


def test_the_package_roots_one_call_api_is_imported_only_when_used() -> None:
    """``medicraft_monai.generate`` lives in a room (``LAZY``); importing the package loads no room, using it does."""
    code = (
        "import sys, medicraft_monai as m; before = sorted(k for k in sys.modules if k.startswith('medicraft_monai.'));"
        "from medicraft_monai.synthesis.generation import generate; print(before, m.generate is generate)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.split() == ["[]", "True"], done.stdout + done.stderr
    import medicraft_monai

    assert {_room(m) for m in medicraft_monai.LAZY.values()} <= set(LEVEL)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        medicraft_monai.nothing  # noqa: B018


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_imports_point_down(path: Path) -> None:
    room = _room(_module_name(path))
    if room is None:
        return
    wrong = set()
    for target in _imports(path):
        other = _room(target)
        if other is None or other == room:
            continue
        if other in LEVEL and LEVEL[other] < LEVEL[room]:
            continue
        wrong.add(f"{target} ({other}, level {LEVEL.get(other, '?')})")
    assert not wrong, (
        f"{path.relative_to(PACKAGE.parent)} is in {room} (level {LEVEL[room]}) and may use only rooms below it, "
        f"but imports {sorted(wrong)}"
    )


def test_lower_rooms_never_import_the_main_job_or_the_command() -> None:
    """The cycle demo -> evaluation -> metrics -> demo is gone and stays gone."""
    for path in MODULES:
        room = _room(_module_name(path))
        if room in ("demo", "cli"):
            continue
        assert not {t for t in _imports(path) if _room(t) in ("demo", "cli")}, path
