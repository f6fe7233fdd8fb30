# Each target is self-sufficient on a fresh machine: it creates .venv when missing and installs
# torch first (the CPU machines here take torch==2.14.1 from local disk), then the package.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install test test-all quickstart lint clean browser test-deps

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[serve,dev]'
	touch $(STAMP)

install: $(STAMP)

# The web page test drives Debian's chromium (never a browser build downloaded by playwright); the ClipClient
# test loads clip-retrieval's client module, installed without its heavy server dependencies. Best effort:
# when either cannot be installed, those tests skip and say why.
browser:
	@test -x /usr/bin/chromium || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
		|| echo "make browser: could not install chromium with apt-get; the web page test will skip"

test-deps: install browser
	@$(PY) -m pip show -q clip-retrieval >/dev/null 2>&1 || $(PY) -m pip install -q --no-deps clip-retrieval==2.45.0 \
		|| echo "make test-deps: could not install clip-retrieval; the ClipClient test will skip"

test: install test-deps
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

test-all: install test-deps
	$(PY) -m pytest -q -m ''

quickstart: install
	$(VENV)/bin/vlm quickstart

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) runs data/shapes
