#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment and install medicraft_monai into it.
#
#   bash scripts/setup_env.sh [VENV_DIR]        (default: .venv)
#
# - PyTorch: a CPU build where no NVIDIA GPU is present (pinned to MEDICRAFT_TORCH_CPU, default
#   torch==2.13.0, the CPU build these machines carry), the default build where `nvidia-smi` sees a GPU.
#   Set MEDICRAFT_TORCH to any pip requirement to choose yourself, for example "torch==2.5.1".
# - then the package in editable mode with its `dev` extra (tests, lint, plots).
# Running it again is cheap: pip skips what is installed.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-${MEDICRAFT_VENV:-$root/.venv}}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    echo "[setup] creating virtual environment $venv"
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

if ! "$venv/bin/python" -c "import torch" >/dev/null 2>&1; then
    if [ -n "${MEDICRAFT_TORCH:-}" ]; then
        spec="$MEDICRAFT_TORCH"
    elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        spec="torch"
    else
        spec="${MEDICRAFT_TORCH_CPU:-torch==2.13.0}"
    fi
    echo "[setup] installing PyTorch ($spec)"
    "${pip[@]}" install -q "$spec"
fi

echo "[setup] installing medicraft_monai[dev] (editable)"
"${pip[@]}" install -q -e "$root[dev]"
"$venv/bin/python" -c "import torch, monai, medicraft_monai; print(f'[setup] ready: torch {torch.__version__}, monai {monai.__version__}, medicraft_monai {medicraft_monai.__version__}')"
