#!/usr/bin/env bash
# Create (or refresh) the MONAI Label virtual environment (.venv-label) for medicraft_monai's Label app.
#
#   bash scripts/setup_label_env.sh [VENV_DIR]        (default: .venv-label)
#
# MONAI Label 0.8.5 pins clash with the main environment (it needs pydicom 2.x), so it lives in its own
# virtual environment:
#   1. PyTorch (CPU build torch==2.13.0 unless MEDICRAFT_TORCH names another requirement);
#   2. MONAI Label's real runtime needs, with pydicom==2.4.4, pydicom-seg==0.4.1, dicomweb-client==0.59.1
#      (newer ones break `import monailabel.app`), and itk (needed at import);
#   3. `pip install --no-deps monailabel==0.8.5` (its declared extras pull torchvision and sam2, which
#      cannot work with the CPU torch and are not needed by our app);
#   4. this package in editable mode without dependencies, plus its runtime needs.
# Running it again is cheap: a marker file records a finished set-up for the same script version.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-${MEDICRAFT_LABEL_VENV:-$root/.venv-label}}"
python="${PYTHON:-python3}"
marker="$venv/.medicraft-label-installed"
stamp="$(cat "${BASH_SOURCE[0]}" "$root/scripts/venv_torch.sh" | sha256sum | cut -c1-16)"

if [ -f "$marker" ] && [ "$(cat "$marker")" = "$stamp" ] && [ -x "$venv/bin/monailabel" ]; then
    echo "[setup-label] $venv is ready"
    exit 0
fi

source "$root/scripts/venv_torch.sh"
venv_with_torch "$venv" setup-label cpu

echo "[setup-label] installing MONAI Label's runtime dependencies"
"${pip[@]}" install -q \
    "pydicom==2.4.4" "pydicom-seg==0.4.1" "dicomweb-client[gcp]==0.59.1" "google-auth>=2.29.0" \
    "monai>=1.4" "pytorch-ignite>=0.4.11" "nibabel>=5.0" "itk>=5.3" "pillow>=10.0" "scikit-image" "psutil" \
    "tensorboard>=2.12" "tqdm>=4.60" "fire>=0.5" \
    "uvicorn>=0.29.0" "pydantic>=2.7.0" "pydantic-settings>=2.2.1" "python-dotenv>=1.0.1" "fastapi>=0.110.2" \
    "python-multipart>=0.0.9" "httpx>=0.27.0" "schedule>=1.2.1" "timeloop>=1.0.2" "expiringdict>=1.2.2" \
    "expiring_dict>=1.1.0" "cachetools>=5.3.3" "watchdog>=4.0.0" "pynetdicom>=2.0.2" "pynrrd>=1.0.0" \
    "einops>=0.7.0" "pyyaml>=6.0.1" "filelock>=3.11.0" "passlib>=1.7.4" "pyjwt>=2.8.0" "bcrypt>=4.1.2" \
    "shapely>=2.0.4" "girder-client>=3.2.3" "requests>=2.31.0" "requests-toolbelt>=1.0.0" "urllib3>=2.2.1" "scipy" "scikit-learn"

echo "[setup-label] installing monailabel==0.8.5 (--no-deps)"
"${pip[@]}" install -q --no-deps "monailabel==0.8.5"

echo "[setup-label] installing medicraft_monai (editable, --no-deps) and its runtime needs"
"${pip[@]}" install -q "numpy>=1.24" "tifffile>=2023.1" "matplotlib>=3.7"
"${pip[@]}" install -q --no-deps -e "$root"

"$venv/bin/python" -c "import monailabel.app, monailabel.interfaces.app, torch, monai, medicraft_monai.label; \
import monailabel; print(f'[setup-label] ready: monailabel {monailabel.__version__}, torch {torch.__version__}, monai {monai.__version__}')"
echo "$stamp" >"$marker"
