# The two commands of the README are `make demo` and `make test`; both set up .venv themselves.
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= demo_output
DATA ?=
PYTEST_ARGS ?=

.PHONY: setup label-setup deploy-setup browser-setup demo test test-numerics lint format benchmark clean

$(VENV)/.installed: pyproject.toml scripts/setup_env.sh scripts/venv_torch.sh
	bash scripts/setup_env.sh $(VENV)
	touch $@

setup: $(VENV)/.installed

# MONAI Label and MONAI Deploy pin clashing versions, so each has its own virtual environment
LABEL_VENV ?= .venv-label
DEPLOY_VENV ?= .venv-deploy

label-setup:
	bash scripts/setup_label_env.sh $(LABEL_VENV)

deploy-setup:
	bash scripts/setup_deploy_env.sh $(DEPLOY_VENV)

# the real browser (Debian's Chromium) that tests/test_review_page.py drives with Playwright
browser-setup:
	bash scripts/setup_browser.sh

demo: setup
	$(VENV)/bin/medicraft demo --output_dir $(OUT) $(if $(DATA),--data $(DATA),)

lint: setup
	$(PY) -m ruff check medicraft_monai tests benchmarks
	$(PY) -m ruff format --check medicraft_monai tests benchmarks

format: setup
	$(PY) -m ruff check --fix medicraft_monai tests benchmarks
	$(PY) -m ruff format medicraft_monai tests benchmarks

test: lint test-numerics label-setup deploy-setup browser-setup
	$(PY) -m pytest -n auto --dist loadfile $(PYTEST_ARGS)

# the numerics tests once per CPU kernel family (PyTorch's ATEN_CPU_CAPABILITY, oneDNN's ONEDNN_MAX_CPU_ISA)
test-numerics: setup
	bash scripts/numerics_matrix.sh $(PYTEST_ARGS)

benchmark: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(OUT) .pytest_cache .ruff_cache build *.egg-info
