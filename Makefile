# Two commands do everything on a fresh machine:
#   make repro   set up .venv/ (if needed) and run the whole DVC pipeline
#   make test    set up .venv/ (if needed) and run the unit tests and nbval over every notebook

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export MPLBACKEND := Agg

.PHONY: setup repro test unit nbval bench schedule gpu-check clean-venv

setup: $(STAMP)

# The pip: list of environment.yml is the single source of dependencies; PyYAML bootstraps reading it.
$(STAMP): environment.yml pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip pyyaml
	$(PY) tools/env_requirements.py environment.yml > $(VENV)/requirements.txt
	$(PY) -m pip install --quiet -r $(VENV)/requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

repro: setup
	test -d .git || git init -q
	dvc repro

test: setup
	$(PY) -m pytest tests notebooks --nbval-lax --nbval-current-env -p no:cacheprovider -q

unit: setup
	$(PY) -m pytest tests -q

nbval: setup
	$(PY) -m pytest notebooks --nbval-lax --nbval-current-env -q

# Cost of the prototype methods relative to DeepLab, side by side in one run (ratios; see README).
bench: setup
	$(PY) -m scaleprotoseg.bench $(BENCH_ARGS)
	$(PY) -m scaleprotoseg.bench --interpret-memory

# Cost of each dataset's paper schedule: FLOP counted per phase (SCHEDULE_ARGS="--measure 20" on a GPU: measured).
schedule: setup
	$(PY) -m scaleprotoseg.schedule $(SCHEDULE_ARGS)

# On a machine with CUDA, with nothing but PyTorch and NumPy (no venv): each method's training on the Pascal
# preset's model, the bench in bf16 and fp32, peak memory, images/s, MFU and a torchrun run (see README).
gpu-check:
	PYTHONPATH=src python3 -m scaleprotoseg.gpu_check $(GPU_CHECK_ARGS)

clean-venv:
	rm -rf $(VENV)
