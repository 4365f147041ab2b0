# Every target creates and fills the virtual environment itself.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
EDGE   := .venv-edge
PROTOS := $(wildcard protos/xfer/v1/*.proto)
GEN    := protos/xfer/v1/.generated
BUF    := node_modules/.bin/buf

FASHION := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
APT_FASHION := DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1

.PHONY: all venv proto data lint test test-edge test-all demo serve migrate report report-sfda report-audit report-playbook report-all bench bench-serve gpu-check clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(STAMP)

$(GEN): $(PROTOS) $(STAMP)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=protos --pyi_out=protos \
	    --grpc_python_out=protos $(PROTOS)
	touch $@

proto: $(GEN)

# Fashion-MNIST is the Debian package dataset-fashion-mnist: installed here when it is missing and apt can run
# (root on Debian/Ubuntu); otherwise one line says how, tests that need it skip and the demo uses digits.
data:
	@if [ -f $(FASHION) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    { $(APT_FASHION) || { apt-get update -q >/dev/null 2>&1 && $(APT_FASHION); }; } \
	    && echo "data: installed Fashion-MNIST (Debian package dataset-fashion-mnist)" \
	    || echo "data: could not install Fashion-MNIST with apt-get (dataset-fashion-mnist); continuing without it"; \
	else echo "data: Fashion-MNIST is missing; install it with: sudo apt-get install dataset-fashion-mnist"; fi

$(BUF):
	npm install --no-save --no-package-lock --silent @bufbuild/buf@1.75.0

# buf lint on the protos; ruff (lint and format) and mypy on the Python.
lint: $(BUF) $(GEN)
	cd protos && ../$(BUF) lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy client server models protos/xfer/errors.py protos/xfer/names.py

# Most tests wait on real servers and subprocesses: parallel workers pay off even on 2 cores (5.7 instead of 9 min).
test: $(GEN) data
	$(PY) -m pytest -q -n auto --maxprocesses=4
	$(MAKE) --no-print-directory test-edge

# The edge client as a device installs it: a second environment with the base install only (no torch,
# onnxruntime or SQLAlchemy) runs tests/edge; the server they talk to runs on the full environment.
$(EDGE)/.installed: pyproject.toml
	$(PYTHON) -m venv $(EDGE)
	$(EDGE)/bin/python -m pip install --quiet --upgrade pip
	$(EDGE)/bin/python -m pip install --quiet '.[test]'
	touch $@

test-edge: $(GEN) $(EDGE)/.installed
	$(EDGE)/bin/python -m pip install --quiet --no-deps --force-reinstall .
	XFER_EDGE_SERVER_PYTHON=$(abspath $(PY)) $(EDGE)/bin/python -m pytest -q -p no:cacheprovider \
	    --rootdir=tests/edge --confcutdir=tests/edge tests/edge

test-all: $(GEN) data
	$(PY) -m pytest -q -n auto --maxprocesses=4 -m 'not gpu'

demo: $(GEN) data
	$(PY) -m xfer.client.demo

serve: $(GEN)
	$(VENV)/bin/xfer-server --data-dir .xfer-data

# Apply the server's schema migrations (XFER_DB_URL, or the SQLite file in .xfer-data) and exit.
migrate: $(GEN)
	$(VENV)/bin/xfer-server migrate --data-dir .xfer-data

report: $(GEN) data
	$(PY) bench/transfer_report.py

# Source-free adaptation (TENT, SHOT, AaD, NRC) on unlabelled real data, LR chosen label-free (~15 min of CPU).
report-sfda: $(GEN) data
	$(PY) bench/report_sfda.py

# What the weights reveal: membership inference and one-run DP audits of Fashion-MNIST sources (~20 min).
report-audit: $(GEN) data
	$(PY) bench/report_audit.py --seeds 3 --examples 600 --epochs 20 --jobs 2

# Few-shot episodes of meta-learned sources, self-pretraining, ranking sources before pulling (~25 min).
report-playbook: $(GEN) data
	$(PY) bench/report_playbook.py --seeds 3

# Every report (about 1.5 hours on 2 cores).
report-all: report report-sfda report-audit report-playbook

bench: $(GEN)
	$(PY) bench/pull.py
	$(PY) bench/finetune.py

# The server under load: 1/8/64 concurrent pulls against a raw socket, 200 stalled readers, ReportRun/s.
bench-serve: $(GEN)
	$(PY) bench/serve_load.py

# For a machine with a CUDA GPU: the GPU-marked tests plus the fine-tuning benchmark, as one script.
gpu-check: $(GEN)
	$(PY) bench/gpu_check.py

clean:
	rm -rf $(VENV) $(EDGE) build node_modules $(GEN) protos/xfer/v1/*_pb2*.py protos/xfer/v1/*_pb2.pyi .demo reports .xfer-data
