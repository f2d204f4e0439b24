# dlinfer developer commands. `make run` serves the examples, `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PLUGINS := $(filter-out plugins/dlinfer_trt,$(sort $(wildcard plugins/dlinfer_*)))
# dlinfer-trt depends on tensorrt and cuda-python (several GB of CUDA libraries). Without a GPU
# it is installed without them; its GPU tests then skip and everything else is tested.
# The example TensorRT operator plugin needs CuPy as well, and is installed the same way.
NO_DEPS_PLUGINS := $(wildcard plugins/dlinfer_trt examples/plugins/dlinfer_trt_scaledtanh)
# Third-party-style example plugins, installed like a user would, so their tests run too.
EXAMPLE_PLUGINS := $(filter-out $(NO_DEPS_PLUGINS),$(sort $(wildcard examples/plugins/dlinfer_*)))
PORT ?= 8000

.PHONY: install run test lint examples clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt -e . $(foreach p,$(PLUGINS) $(EXAMPLE_PLUGINS),-e $(p))
	$(if $(NO_DEPS_PLUGINS),$(BIN)/pip install --quiet --no-deps $(foreach p,$(NO_DEPS_PLUGINS),-e $(p)))

examples: install
	$(BIN)/python examples/make_models.py examples/models

run: examples
	$(BIN)/dlinfer-core --config examples/node.toml --port $(PORT)

test: install lint
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) examples/models build dist
