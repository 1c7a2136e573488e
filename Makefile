# The two commands of the README: `make demo` (main job on the embedded default) and `make test`.
# Both create .venv and install everything on a fresh machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench bench-builder bench-science venv clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python recipes/apo.py

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q tests

# Speed and memory benchmarks (ratios measured side by side; results in benchmarks/results/*.json).
bench: $(STAMP)
	$(BIN)/python builders/bench_builder.py
	$(BIN)/python benchmarks/bench_collector.py
	$(BIN)/python benchmarks/bench_compare.py
	$(BIN)/python benchmarks/bench_apo.py
	$(BIN)/python benchmarks/bench_eval.py

bench-builder: $(STAMP)
	$(BIN)/python builders/bench_builder.py

# The drift benchmark: teachers vs learn-only vs pairwise DPO vs APO (about half an hour on 2 CPU cores).
bench-science: $(STAMP)
	$(BIN)/python recipes/benchmark.py

clean:
	rm -rf $(VENV) outputs
