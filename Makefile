# The two commands a newcomer needs:  `make demo`  and  `make test`.
# Both create ./.venv and install shadow into it (editable, with the dev extras) on first use.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/shadow demo

test: $(VENV)/.installed
	$(PY) -m pytest -n 2 --durations=15

lint: $(VENV)/.installed
	$(PY) -m mypy shadow adapters snapshots

clean:
	rm -rf $(VENV) .shadow .pytest_cache .mypy_cache
