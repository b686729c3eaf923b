# Two entry points, each doing all of its own setup on a fresh machine.
#   make app   installs only what the lesson needs (.[app]: streamlit, plotly, the engine), then runs it
#   make test  installs everything (.[app,cuda,dev]: + numba, numba-cuda, pytest, torch, transformers)
# Each install has its own stamp; after `make test`, `make app` installs nothing more.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APP_STAMP := $(VENV)/.installed-app

.PHONY: app test demo browser clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(APP_STAMP): pyproject.toml | $(BIN)/python
	@if [ -f $(STAMP) ] && [ $(STAMP) -nt pyproject.toml ]; then echo "app dependencies already installed (make test)"; \
	  else $(BIN)/pip install -q -e '.[app]'; fi
	touch $(APP_STAMP)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[app,cuda,dev]'
	touch $(STAMP)

app: $(APP_STAMP)
	$(BIN)/streamlit run explainer/app.py

# the README's first CLI command: the bundled model drafting 3 tokens ahead (numpy only, no app or test extras)
demo: $(APP_STAMP)
	$(BIN)/python -m mtp_ref generate --prompt "Once upon a time" --max-new-tokens 48 --draft 3

# The browser test needs Debian's chromium; install it when we can (root + apt), else it is skipped.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
	  echo "note: chromium not installed; the browser test will be skipped"

test: $(STAMP) browser
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV)
