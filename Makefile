# The two set-up commands of the README. Both create or reuse .venv first.
VENV_PYTHON := .venv/bin/python
ARGS ?=

.PHONY: setup browser train test

setup:
	@bash scripts/setup_env.sh

# Headless Chromium for the Serve demo page's browser test (Debian packages, as root or through password-less sudo;
# otherwise it says how and the suite runs, that one test failing until then).
browser:
	@bash scripts/install_browser.sh

train: setup
	$(VENV_PYTHON) pipelines/train.py $(ARGS)

test: setup browser
	$(VENV_PYTHON) -m pytest -q -n 2 --dist loadgroup $(ARGS)
