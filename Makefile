# `make run` and `make test` set up everything they need, then run.
PYTHON ?= python3
VENV   ?= .venv
CONFIG ?= config/looper.yaml
BIN    := $(VENV)/bin

.PHONY: run test check-config bench clean venv test-tools

venv: $(VENV)/.installed

# A fresh Debian has python3 but not always venv/ensurepip (package python3-venv).
$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
	  echo "installing python3-venv (Debian package) for $(PYTHON)"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

run: venv
	$(BIN)/looper run -c $(CONFIG)

check-config: venv
	$(BIN)/looper check-config -c $(CONFIG)

test: venv
	$(BIN)/python -m pytest -q

# Debian's Postfix and nmap for the tests that use real software (root;
# starts no mail server). Without them those tests are skipped.
test-tools:
	bash tests/install-test-tools.sh

bench: venv
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python bench/splice.py
	$(BIN)/python bench/smtp.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
