# Two commands on a fresh machine:  `make app`  (set up + serve the app on the embedded default)  and  `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: app demo test bench lint zoo clean notebooks-html

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed-all: pyproject.toml app/__init__.py | $(BIN)/python
	$(BIN)/pip install -q -e ".[all]"
	touch $@

$(VENV)/.installed-dev: pyproject.toml app/__init__.py | $(BIN)/python
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

app: $(VENV)/.installed-all
	$(BIN)/craftlab app

demo: $(VENV)/.installed-all
	$(BIN)/craftlab demo

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q

# Execute every notebook (from its jupytext .py) and publish it with outputs, a PNG beside every figure:
# build/notebooks/NN_name.ipynb and .html (git-ignored), per-cell times in NN_name.cell_times.json.
notebooks-html: $(VENV)/.installed-dev
	CRAFTLAB_NOTEBOOK_OUT=build/notebooks $(BIN)/python -m pytest -q -m notebooks tests/test_notebooks.py

bench: $(VENV)/.installed-dev
	$(BIN)/python -m benchmarks.run

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .

# Re-make the pretrained zoo weights shipped in craftlab/zoo (maintainers).
zoo: $(VENV)/.installed-dev
	$(BIN)/craftlab pretrain --model all --ship

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
