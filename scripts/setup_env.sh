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

source "$root/scripts/venv_torch.sh"
venv_with_torch "$venv" setup

echo "[setup] installing medicraft_monai[dev] (editable)"
"${pip[@]}" install -q -e "$root[dev]"
"$venv/bin/python" -c "import torch, monai, medicraft_monai; print(f'[setup] ready: torch {torch.__version__}, monai {monai.__version__}, medicraft_monai {medicraft_monai.__version__}')"
