# The two commands of the README: `make demo` (main job on the embedded default) and `make test`.
# Both create .venv and install everything on a fresh machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Second test environment for the real Qwen2.5-VL processor, which needs torchvision: PyPI's torchvision does not
# import beside the CPU torch 2.13.0 of .venv, so .venv-qwen has torch 2.14.1 + torchvision 0.29.1 (a CUDA build
# that runs on the CPU; measured here: 2 min 29 s to install, 6.4 GB). `make test` runs the tests marked `qwen`
# in it (they skip in .venv, saying why).
QVENV ?= .venv-qwen
QBIN := $(QVENV)/bin
QSTAMP := $(QVENV)/.installed

.PHONY: demo test bench bench-builder bench-science venv venv-qwen clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

$(QSTAMP): pyproject.toml
	$(PY) -m venv $(QVENV)
	$(QBIN)/pip install -q --upgrade pip
	$(QBIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(QBIN)/pip install -q -e '.[dev]'
	touch $(QSTAMP)

venv: $(STAMP)

venv-qwen: $(QSTAMP)

demo: $(STAMP)
	$(BIN)/python recipes/apo.py

test: $(STAMP) $(QSTAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q tests
	$(QBIN)/python -m pytest -n 2 --dist loadgroup -q -m qwen tests

# Speed and memory benchmarks (ratios measured side by side; results in benchmarks/results/*.json).
bench: $(STAMP)
	$(BIN)/python builders/bench_builder.py
	$(BIN)/python benchmarks/bench_collector.py
	$(BIN)/python benchmarks/bench_compare.py
	$(BIN)/python benchmarks/bench_apo.py
	$(BIN)/python benchmarks/bench_eval.py

bench-builder: $(STAMP)
	$(BIN)/python builders/bench_builder.py

# The drift benchmark: teachers, consensus, learn-only, pairwise DPO, APO, controls and the oracle over 5 seeds
# (measured: 54 min wall on the 2-core machine, the student chains in two processes; see the README).
bench-science: $(STAMP)
	$(BIN)/python recipes/benchmark.py

clean:
	rm -rf $(VENV) $(QVENV) outputs
