# Two commands: `make demo` and `make test` set everything up on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install demo test bench bench-gpu toy-models toy-models-all tiny-models browser clean

# A new venv takes about 7 GiB (torch from local disk is a CUDA build): say so before pip fails half-way.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || [ $$(df -Pk . | awk 'NR==2 {print $$4}') -ge 7340032 ] || \
	  { echo "install: under 7 GiB free here; the venv needs about 7 GiB (torch and its CUDA libraries)" >&2; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

tiny-models: install
	$(BIN)/python -m tests.tinymodels .cache/tiny

demo: install
	$(BIN)/synthgen run jobs/demo.yaml --overwrite  # out/demo is scratch: replace an older demo

# Test tools from Debian (CI machines start without them): headless Chromium for the audit-report
# browser test, dicom3tools' dciodvfy (the DICOM standard's IOD validator) for the DICOM output test.
browser:
	(command -v chromium >/dev/null && command -v dciodvfy >/dev/null) || \
	  (apt-get update -qq && apt-get install -y -qq chromium dicom3tools)

test: install tiny-models browser
	$(BIN)/python -m pytest -q tests

bench: install tiny-models
	$(BIN)/python -m benchmarks.run

# On a GPU host: generation at real model sizes (SD 1.5, SD-Turbo-class, SDXL; batch 1/4/16/32; compile
# off/on) vs a bare diffusers loop -> benchmarks/results/generation-<gpu>.json. Needs torch, transformers,
# diffusers, open_clip_torch, pydantic and pyyaml only (no Ray, no venv): BENCH_PY=python3 by default.
BENCH_PY ?= python3
bench-gpu:
	$(BENCH_PY) -m benchmarks.bench_generation

# The toy text-to-image model from scratch (~1 h on 2 cores; its frozen text encoder is the committed
# toy CLIP's text tower). The toy CLIP and GAN only need retraining when the world itself changes:
# toy-models-all trains all three (CLIP first).
toy-models: install
	$(BIN)/python -m pipelines.toyworld.train diffusion

toy-models-all: install
	$(BIN)/python -m pipelines.toyworld.train all

clean:
	rm -rf out .cache
