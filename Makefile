# oodnc: the only place that knows set-up.
#
#   make demo    all six notebooks end-to-end on the embedded offline dataset (CPU, minutes)
#   make test    rustfmt + clippy, cargo tests, notebook tests (CI runs exactly this)
#   make lab     JupyterLab with this project's Rust kernel
#   make bench   benchmarks, each printing ratios against a baseline measured in the same run
#                (oodnc bench all, then the notebook cell latency: make bench-cells)
#   make docs-notebooks  make demo, then its executed notebooks (outputs kept) to docs/notebooks/
#   make reproduce  the coursework: real datasets, 300 epochs (GPU), the six notebooks
#   make setup   only the set-up (the targets above run it first; it is idempotent)
#
# Set-up installs, once per machine and reused by every clone:
#   - a Python venv keyed by torch and Python version, with the PyPI torch wheel that
#     matches our tch pin (requirements.txt), JupyterLab, nbconvert, nbclient;
#   - evcxr_jupyter (pinned) for the Rust kernel, built from its published source with
#     oodnc's patch (scripts/evcxr/: rust-analyzer's caches primed on all cores, which
#     takes a third off a notebook's first output; scripts/build-evcxr.sh);
# and, per clone: the .venv and .libtorch links (read by .cargo/config.toml) and the
# kernel spec in .jupyter/ (used through JUPYTER_PATH, so another `rust` kernel the
# user may have installed does not shadow ours).

SHELL := /bin/bash
.DEFAULT_GOAL := help

TORCH_VERSION := 2.13.0
EVCXR_VERSION := 0.22.0
PYTHON ?= python3
OODNC_CACHE ?= $(HOME)/.cache/oodnc

PYVER := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
VENV ?= $(OODNC_CACHE)/venv-torch$(TORCH_VERSION)-py$(PYVER)
REQ_HASH := $(shell sha256sum requirements.txt | cut -c1-12)
VENV_STAMP := $(VENV)/.oodnc-requirements-$(REQ_HASH)
# Keyed by the patches and the script that applies them: a changed patch builds anew.
EVCXR_PATCH_HASH := $(shell cat scripts/build-evcxr.sh scripts/evcxr/*.patch | sha256sum | cut -c1-10)
EVCXR_ROOT := $(OODNC_CACHE)/evcxr-$(EVCXR_VERSION)-oodnc-$(EVCXR_PATCH_HASH)
EVCXR := $(EVCXR_ROOT)/bin/evcxr_jupyter
KERNEL_JSON := .jupyter/kernels/rust/kernel.json
LIBTORCH_LINK := .libtorch

export JUPYTER_PATH := $(CURDIR)/.jupyter
export OODNC_PYTHON := $(CURDIR)/.venv/bin/python
PY := $(CURDIR)/.venv/bin/python

# Notebook runs: profile and per-cell timeout (seconds).
OODNC_PROFILE ?= demo
NB_TIMEOUT ?= 3600
NOTEBOOKS := $(sort $(wildcard notebooks/0*.ipynb))

.PHONY: help setup venv evcxr kernel demo reproduce test lint test-rust test-notebooks lab bench bench-cells docs-notebooks clean-build info torch211 gpu-variant gpu-bundle

help:
	@sed -n '3,11p' Makefile | sed 's/^# \{0,1\}//'

setup: venv evcxr kernel
	@echo "set-up complete: venv $(VENV), evcxr $(EVCXR_VERSION), kernel spec $(KERNEL_JSON)"

# ---------------------------------------------------------------- Python venv
venv: $(VENV_STAMP) .venv $(LIBTORCH_LINK)

$(VENV_STAMP): requirements.txt
	@test -n "$(PYVER)" || { echo "error: $(PYTHON) not found; install Python 3.10+ (python3, python3-venv)"; exit 1; }
	@echo ">> venv $(VENV) (torch $(TORCH_VERSION); first time ~5 GB, a few minutes)"
	@test -x "$(VENV)/bin/python" || $(PYTHON) -m venv "$(VENV)" || { \
	  echo "error: could not create a venv; on Debian: apt-get install python3-venv"; exit 1; }
	"$(VENV)/bin/python" -m pip install --quiet --upgrade pip
	"$(VENV)/bin/python" -m pip install --progress-bar off -r requirements.txt
	@"$(VENV)/bin/python" -c 'import torch, sys; v = torch.__version__.split("+")[0]; sys.exit(0 if v == "$(TORCH_VERSION)" else "torch " + v + " != $(TORCH_VERSION)")'
	@rm -f "$(VENV)"/.oodnc-requirements-*
	@touch "$@"

.venv: $(VENV_STAMP)
	@ln -sfn "$(VENV)" .venv

$(LIBTORCH_LINK): $(VENV_STAMP) .venv
	@ln -sfn "$$(readlink -f .venv)/lib/python$(PYVER)/site-packages/torch" $(LIBTORCH_LINK)
	@test -d $(LIBTORCH_LINK)/lib || { echo "error: $(LIBTORCH_LINK)/lib missing"; exit 1; }

# ---------------------------------------------------------------- evcxr kernel
evcxr: $(EVCXR)

$(EVCXR):
	@echo ">> evcxr_jupyter $(EVCXR_VERSION) with oodnc's patch, into $(EVCXR_ROOT) (about 6 minutes on 2 cores, once per machine)"
	scripts/build-evcxr.sh $(EVCXR_VERSION) "$(EVCXR_ROOT)"

kernel: $(KERNEL_JSON)

$(KERNEL_JSON): scripts/kernel_spec.py scripts/rust-kernel $(EVCXR) $(VENV_STAMP) $(LIBTORCH_LINK)
	@"$(PY)" scripts/kernel_spec.py --repo "$(CURDIR)" --evcxr "$(EVCXR)" \
	  --work "$(OODNC_CACHE)/evcxr-work" --out "$@"

# ---------------------------------------------------------------- jobs
info: setup
	cargo run --quiet --release --bin oodnc -- info

demo: setup
	@echo ">> the six notebooks, profile $(OODNC_PROFILE); executed copies in build/notebooks, figures in figures/"
	OODNC_PROFILE=$(OODNC_PROFILE) "$(PY)" scripts/run_notebooks.py --out build/notebooks \
	  --timeout $(NB_TIMEOUT) --require-image $(NOTEBOOKS)

# The coursework profile: real datasets (downloaded and verified), the full ResNet-18,
# 300 epochs (a GPU is strongly advised), then the six notebooks on that run.
reproduce: setup
	cargo run --release --bin oodnc -- data fetch --dataset all --root data
	cargo run --release --bin oodnc -- train --profile coursework --run coursework --resume
	OODNC_PROFILE=coursework "$(PY)" scripts/run_notebooks.py --out build/notebooks-coursework \
	  --timeout 86400 --require-image $(NOTEBOOKS)

test: setup lint test-rust test-notebooks

# Formatting (rustfmt.toml) and clippy with warnings as errors, before the tests.
lint: setup
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --quiet -- -D warnings
	# The library as the notebooks build it (oodnc-nb: no CLI, no downloader, no Parquet).
	cargo clippy -p oodnc --lib --no-default-features --quiet -- -D warnings

test-rust: setup
	cargo test --workspace --no-fail-fast

test-notebooks: setup
	"$(PY)" -m pytest -q tests

lab: setup
	"$(VENV)/bin/jupyter" lab --notebook-dir="$(CURDIR)"

bench: setup
	cargo run --release --bin oodnc -- bench all
	$(MAKE) --no-print-directory bench-cells

# Notebook cell latency in the real kernel, warm (CELLS_FLAGS=--cold for a fresh evcxr
# work dir): set-up time, median and p90 of trivial cells, shipped evcxr settings
# against evcxr's defaults measured in the same run.
CELLS_FLAGS ?=
bench-cells: setup
	"$(PY)" scripts/cell_latency.py $(CELLS_FLAGS) --json build/cell_latency.json

# The demo notebooks with their outputs, for readers who do not run them.
docs-notebooks: demo
	"$(PY)" scripts/export_notebooks.py --out docs/notebooks $(addprefix build/notebooks/,$(notdir $(NOTEBOOKS)))

# ---------------------------------------------------------------- torch 2.11 variant (GPU bundle)
# The torch==2.11.0 wheel (no deps), extracted into the cache: its headers and
# libraries compile and link the tch 0.24 build variant of oodnc, the one that runs
# on a machine whose own PyTorch is 2.11 (the lent GPU machine). Its CUDA
# libraries' dependencies resolve, for linking and for the CPU run here, through
# the main venv's nvidia-* wheels (same CUDA 13 sonames).
TORCH211 := $(OODNC_CACHE)/torch-2.11.0/site-packages
TORCH211_STAMP := $(TORCH211)/torch/.oodnc-extracted

torch211: $(TORCH211_STAMP)

$(TORCH211_STAMP): | venv
	@mkdir -p "$(OODNC_CACHE)/wheels" "$(TORCH211)"
	@ls "$(OODNC_CACHE)"/wheels/torch-2.11.0-*.whl >/dev/null 2>&1 || { \
	  echo ">> pip download torch==2.11.0 --no-deps (about 530 MB, once)"; \
	  "$(PY)" -m pip download --no-deps --progress-bar off torch==2.11.0 -d "$(OODNC_CACHE)/wheels"; }
	cd "$(TORCH211)" && unzip -q -o "$$(ls "$(OODNC_CACHE)"/wheels/torch-2.11.0-*.whl | head -1)" \
	  'torch/lib/*' 'torch/include/*' 'torch/version.py' 'torch/__init__.py'
	@ln -sfn "$$(readlink -f .venv)/lib/python$(PYVER)/site-packages/nvidia" "$(TORCH211)/nvidia"
	@touch "$@"

# Builds the variant (same sources, tch 0.24) into the shared target folder.
gpu-variant: torch211
	scripts/torch211_variant.sh build/torch-2.11
	cd build/torch-2.11 && CARGO_TARGET_DIR="$(CURDIR)/target" cargo build --release --bin oodnc

# The GPU bundle (under 64 MiB): the variant's release binary, stripped, the launcher
# (the machine's own torch 2.11 libraries), gpu_check.sh and the Python baselines.
gpu-bundle: torch211
	scripts/gpu_bundle.sh build/gpu-bundle

clean-build:
	rm -rf build target .jupyter
