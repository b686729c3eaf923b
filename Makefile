# Two entry points, each doing all of its own setup on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: app test demo browser clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[app,cuda,dev]'
	touch $(STAMP)

app: $(STAMP)
	$(BIN)/streamlit run explainer/app.py

demo: $(STAMP)
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
