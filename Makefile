# Each target is self-sufficient on a fresh machine: it creates .venv when missing and installs
# torch first (the CPU machines here take torch==2.14.1 from local disk), then the package.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install test test-all quickstart lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[serve,dev]'
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m pytest -q

test-all: install
	$(PY) -m pytest -q -m ''

quickstart: install
	$(VENV)/bin/vlm quickstart

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs data/shapes
