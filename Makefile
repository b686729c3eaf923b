# Two entry points, each doing all of its own setup on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: app test demo clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[app,cuda,dev]'
	touch $(STAMP)

app: $(STAMP)
	$(BIN)/streamlit run explainer/app.py

demo: $(STAMP)
	$(BIN)/python -m mtp_ref generate --prompt "Once upon a time" --max-new-tokens 48 --draft 3

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV)
