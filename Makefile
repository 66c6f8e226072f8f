# Two commands do everything on a fresh machine:
#   make repro   set up .venv/ (if needed) and run the whole DVC pipeline
#   make test    set up .venv/ (if needed) and run every test (the slow ones too) and nbval over every notebook
# make unit is the fast loop while editing: the tests not marked slow (no subprocess, none over ~2 s; every
# module keeps fast tests), about 2 minutes on 2 cores.
# make lock refreshes requirements.lock from environment.yml (the only target that needs the package index
# besides the first set-up's downloads).

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
LOCK   := requirements.lock
PYTHON ?= python3
# The tools of `make lock`, pinned: uv resolves and hashes, PyYAML reads environment.yml.
LOCK_TOOLS := uv==0.13.9 pyyaml==6.0.4
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export MPLBACKEND := Agg

.PHONY: setup lock repro test unit nbval bench cost schedule gpu-check rehearse scaling clean-venv

setup: $(STAMP)

# .venv/ holds exactly requirements.lock (hash-checked, no dependency resolution), then the project itself,
# built by the locked setuptools (--no-build-isolation: nothing unlocked is fetched). lock_check.py refuses a
# Python other than the lock's, and afterwards removes what the lock lacks and checks .venv equals the lock.
$(STAMP): $(LOCK) pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) tools/lock_check.py --target $(LOCK)
	$(PY) -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) tools/lock_check.py --sync $(LOCK)
	touch $(STAMP)

# Resolve environment.yml's pip: list into requirements.lock with the pinned uv, in a throw-away venv.
# Pins already in the lock are kept while environment.yml allows them; LOCK_ARGS=--upgrade moves every
# package to its newest allowed release, LOCK_ARGS="--upgrade-package NAME" one package.
lock:
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(PYTHON) -m venv "$$tmp" && "$$tmp/bin/pip" install --quiet $(LOCK_TOOLS) && \
	"$$tmp/bin/python" tools/lock.py $(LOCK_ARGS)

# After the run, the pipeline's outputs are saved as the DVC experiment `baseline` (replacing an older one; the
# target dvc.yaml leaves out data.dvc, whose raw folder a fresh machine lacks), which later
# experiments compare with (`dvc exp diff baseline`); skipped in a repository without a commit.
repro: setup
	test -d .git || git init -q
	dvc repro
	if git rev-parse -q --verify HEAD >/dev/null; then dvc exp save --force --name baseline dvc.yaml; \
	else echo "make repro: no git commit, so no baseline experiment saved"; fi

# Everything: unit tests, the slow ones (DVC, papermill, torchrun, headless Chromium…) and nbval over every
# notebook (conftest.py gives the notebooks one shared smoke folder, so the tiny upstream models are trained once).
test: setup
	$(PY) -m pytest tests notebooks --nbval-lax --nbval-current-env -p no:cacheprovider -q

# The fast tests only (@pytest.mark.slow excluded).
unit: setup
	$(PY) -m pytest tests -m "not slow" -q

nbval: setup
	$(PY) -m pytest notebooks --nbval-lax --nbval-current-env -q

# Cost of the prototype methods relative to DeepLab, side by side in one run (ratios; see README).
bench: setup
	$(PY) -m scaleprotoseg.tools.bench $(BENCH_ARGS)
	$(PY) -m scaleprotoseg.tools.bench --interpret-memory

# Cost of each dataset's paper schedule: FLOP counted per phase (COST_ARGS="--measure 20" on a GPU: measured).
# COST_ARGS (or SCHEDULE_ARGS) pass options; `make schedule` is the same target under its former name.
cost: setup
	$(PY) -m scaleprotoseg.tools.cost $(COST_ARGS) $(SCHEDULE_ARGS)

schedule: cost

# A paper preset at its true sizes through the real DVC pipeline, counts shortened (PRESET=all: every preset);
# per stage time, memory and output sizes in rehearsal/<preset>.md (README, "Rehearsal at true sizes").
PRESET ?= pascal
rehearse: setup
	$(PY) -m scaleprotoseg.tools.rehearse --preset $(PRESET) $(REHEARSE_ARGS)

# How the per-image stages' time and peak memory grow with the number of images (README, same section).
scaling: setup
	$(PY) -m scaleprotoseg.tools.scaling $(SCALING_ARGS)

# On a machine with CUDA, with nothing but PyTorch and NumPy (no venv): each method's training on the Pascal
# preset's model, the bench in bf16 and fp32, peak memory, images/s, MFU and a torchrun run (see README).
gpu-check:
	PYTHONPATH=src python3 -m scaleprotoseg.tools.gpu_check $(GPU_CHECK_ARGS)

clean-venv:
	rm -rf $(VENV)
