# Shared by scripts/setup_env.sh, setup_label_env.sh and setup_deploy_env.sh (sourced, not run).
#
#   venv_with_torch VENV TAG [gpu-aware|cpu]
#
# Creates the virtual environment VENV (with $python, default $PYTHON or python3) when it has no python, sets the
# array `pip` to its pip, and installs PyTorch when `import torch` fails: MEDICRAFT_TORCH (any pip requirement)
# when set; otherwise, with "gpu-aware" (the default), the default build where `nvidia-smi` sees a GPU; otherwise a
# CPU build, MEDICRAFT_TORCH_CPU (default torch==2.13.0, the CPU build these machines carry). TAG prefixes messages.
venv_with_torch() {
    local venv="$1" tag="$2" mode="${3:-gpu-aware}" spec
    if [ ! -x "$venv/bin/python" ]; then
        echo "[$tag] creating virtual environment $venv"
        "${python:-${PYTHON:-python3}}" -m venv "$venv"
    fi
    pip=("$venv/bin/python" -m pip --disable-pip-version-check)
    if ! "$venv/bin/python" -c "import torch" >/dev/null 2>&1; then
        if [ -n "${MEDICRAFT_TORCH:-}" ]; then
            spec="$MEDICRAFT_TORCH"
        elif [ "$mode" = gpu-aware ] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
            spec="torch"
        else
            spec="${MEDICRAFT_TORCH_CPU:-torch==2.13.0}"
        fi
        echo "[$tag] installing PyTorch ($spec)"
        "${pip[@]}" install -q "$spec"
    fi
}
