# The two set-up commands of the README. Both create or reuse .venv first.
VENV_PYTHON := .venv/bin/python
ARGS ?=

.PHONY: setup train test

setup:
	@bash scripts/setup_env.sh

train: setup
	$(VENV_PYTHON) pipelines/train.py $(ARGS)

test: setup
	$(VENV_PYTHON) -m pytest -q $(ARGS)
