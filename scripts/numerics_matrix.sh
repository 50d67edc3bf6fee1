#!/usr/bin/env bash
# Run the numerics tests once per CPU kernel family that PyTorch and oneDNN can be told to use, so a tolerance
# that only holds for the kernels of this machine's CPU shows up here instead of on another CI machine.
#
#   bash scripts/numerics_matrix.sh [pytest args...]        (make test-numerics)
#
# ATEN_CPU_CAPABILITY picks PyTorch's own vectorised kernels (default = no SIMD, avx2, avx512); ONEDNN_MAX_CPU_ISA
# caps the instruction set oneDNN's convolution and matmul kernels may use (AVX2 stands for a CPU without AVX512 or
# AMX, SSE41 for the oldest x86-64). A setting above what this CPU has falls back to what it has.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PY:-$root/.venv/bin/python}"
tests=(
  tests/test_solvers.py tests/test_inferers_latent.py tests/test_diffusion_core.py tests/test_metrics_features.py
  tests/test_metrics_fidelity.py tests/test_metrics_diversity.py tests/test_metrics_privacy.py
  tests/test_metrics_classification.py tests/test_transforms_context.py tests/test_transforms_intensity.py
  tests/test_transforms_latent.py tests/test_inferers_autocast.py
)
status=0
for setting in ATEN_CPU_CAPABILITY=default ATEN_CPU_CAPABILITY=avx2 ATEN_CPU_CAPABILITY=avx512 \
  ONEDNN_MAX_CPU_ISA=AVX2 ONEDNN_MAX_CPU_ISA=SSE41; do
  echo "[numerics] $setting"
  if ! (cd "$root" && env "$setting" "$py" -m pytest -q -p no:cacheprovider "${tests[@]}" "$@"); then
    echo "[numerics] FAILED under $setting"
    status=1
  fi
done
exit $status
