#!/usr/bin/env bash
# Create (or refresh) the MONAI Deploy App SDK virtual environment, .venv-deploy, and install medicraft_monai into it.
#
#   bash scripts/setup_deploy_env.sh [VENV_DIR]        (default: .venv-deploy, or $MEDICRAFT_DEPLOY_VENV)
#
# The App SDK lives in its own environment: monai-deploy-app-sdk 4.0.0 pulls holoscan-cu13 (which runs on a CPU-only
# machine), holoscan-cli and tritonclient, needs pydicom>=3 and highdicom at import, and clashes with MONAI Label's pins.
# - PyTorch: a CPU build where no NVIDIA GPU is present (MEDICRAFT_TORCH_CPU, default torch==2.13.0: pip's
#   find-links pick the local +cpu wheel where there is one), the default build where `nvidia-smi` sees a GPU;
#   MEDICRAFT_TORCH overrides both, as in scripts/setup_env.sh.
# - then holoscan-cu13, monai-deploy-app-sdk==4.0.0, pydicom>=3, highdicom, and this package (editable, `deploy` extra).
# Running it again is fast: a stamp file records the script and pyproject.toml it was made with, and nothing is
# reinstalled while both are unchanged and the imports work.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-${MEDICRAFT_DEPLOY_VENV:-$root/.venv-deploy}}"
python="${PYTHON:-python3}"
stamp="$venv/.installed"
want="$(cat "${BASH_SOURCE[0]}" "$root/scripts/venv_torch.sh" "$root/pyproject.toml" | sha256sum | cut -d' ' -f1)"
check='import holoscan, monai, monai.deploy.core, pydicom, highdicom, torch, medicraft_monai.deploy'
# the fast path finds the packages without importing them (importing holoscan and torch takes seconds)
present='import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ("holoscan", "monai", "pydicom", "highdicom", "torch", "medicraft_monai")))'

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$venv/bin/python" -c "$present" >/dev/null 2>&1; then
    echo "[setup-deploy] $venv is up to date"
    exit 0
fi

source "$root/scripts/venv_torch.sh"
venv_with_torch "$venv" setup-deploy

echo "[setup-deploy] installing holoscan-cu13, monai-deploy-app-sdk 4.0.0, pydicom>=3, highdicom, medicraft_monai[deploy]"
"${pip[@]}" install -q holoscan-cu13 "holoscan-cli==4.1.0" "monai-deploy-app-sdk==4.0.0" "pydicom>=3" "highdicom>=0.22" -e "$root[deploy]"
"$venv/bin/python" -c "$check; import monai.deploy; print(f'[setup-deploy] ready: torch {torch.__version__}, monai {monai.__version__}, holoscan {holoscan.__version__}, monai-deploy-app-sdk {monai.deploy.__version__}')"
echo "$want" >"$stamp"
