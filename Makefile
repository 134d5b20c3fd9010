# `make run` and `make test` set up everything they need, then run.
# Another Python gets its own virtualenv, e.g. (as .ci/run does):
#   make test PYTHON=python3.13 VENV=.venv-3.13
PYTHON ?= python3
VENV   ?= .venv
CONFIG ?= config/looper.yaml
BIN    := $(VENV)/bin
# Seconds per fuzz target (fuzz/README.md).
FUZZ_SECONDS      ?= 20
FUZZ_LONG_SECONDS ?= 600

.PHONY: run demo test check-config bench clean venv test-tools fuzz fuzz-long install

# A virtualenv belongs to one Python: refuse to use it with another.
venv: $(VENV)/.installed
	@want=$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])') && \
	have=$$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])') && \
	[ "$$want" = "$$have" ] || { \
	  echo "$(VENV) is Python $$have but PYTHON=$(PYTHON) is $$want: give VENV=.venv-$$want, or make clean" >&2; exit 1; }

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

# As root, the trap runs as run_as.user (looper) once port 25 is bound: that
# system user is added here if missing, as `make install` adds it.
run: venv
	@user=$$($(BIN)/python -c 'import sys; from looper.config import load_config; r = load_config(sys.argv[1]).run_as; \
	  print(r.user if r else "")' $(CONFIG) 2>/dev/null); \
	[ "$$(id -u)" != 0 ] || [ -z "$$user" ] || getent passwd "$$user" >/dev/null || { \
	  echo "adding the system user $$user, which looper runs as once port 25 is bound (run_as in $(CONFIG))"; \
	  useradd --system --user-group --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin "$$user"; }
	$(BIN)/looper run -c $(CONFIG)

# The trap at work in half a minute, on loopback, as any user.
demo: venv
	$(BIN)/looper demo

check-config: venv
	$(BIN)/looper check-config -c $(CONFIG)

# looper as a systemd service, as root: its own virtualenv in /opt/looper,
# /etc/looper/looper.yaml if absent, the looper user, /var/log/looper, the
# unit and the logrotate file. Running it again changes nothing. Where things
# go: PREFIX, SYSCONFDIR, LOGDIR, UNITDIR, LOGROTATEDIR, LOOPER_USER (see
# contrib/install.sh), e.g. make install PREFIX=/srv/looper
install:
	sh contrib/install.sh

test: venv
	$(BIN)/python -m pytest -q

# Debian's Postfix and nmap for the tests that use real software (root;
# starts no mail server). Without them those tests are skipped.
test-tools:
	bash tests/install-test-tools.sh

# atheris (libFuzzer for Python) and coverage, for fuzz/.
$(VENV)/.fuzz-installed: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[fuzz]'
	touch $@

# Coverage-guided fuzzing of the sans-IO machines and the config loader:
# FUZZ_SECONDS per target (fuzz-long: FUZZ_LONG_SECONDS), one after another.
fuzz: venv $(VENV)/.fuzz-installed
	$(BIN)/python fuzz/run.py --seconds $(FUZZ_SECONDS)

fuzz-long: venv $(VENV)/.fuzz-installed
	$(BIN)/python fuzz/run.py --seconds $(FUZZ_LONG_SECONDS)

# The benchmarks' peers (README, Benchmarks): the `bench` extra (uvloop,
# aiosmtpd) in the venv; socat, jq, Postfix's smtp-sink and Dovecot (imapd and
# pop3d, for tests/dovecot.py's private instance) from Debian's packages,
# installed as root (Postfix with no configuration and not started), named
# otherwise. `bench` runs the quick benches (a minute each at most),
# `bench-full` the full ones (several minutes each).
.PHONY: bench-tools bench-full
$(VENV)/.bench-installed: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[bench]'
	touch $@

bench-tools: venv $(VENV)/.bench-installed
	@missing=$$(command -v socat >/dev/null || echo socat; \
	            PATH="$$PATH:/usr/sbin" command -v smtp-sink >/dev/null || echo postfix; \
	            command -v jq >/dev/null || echo jq; \
	            [ -x /usr/lib/dovecot/imap ] || echo dovecot-imapd; [ -x /usr/lib/dovecot/pop3 ] || echo dovecot-pop3d); \
	[ -z "$$missing" ] && exit 0; \
	if [ "$$(id -u)" != 0 ]; then \
	  echo "bench: missing Debian packages:" $$missing "(socat; postfix for smtp-sink; jq; dovecot): sudo apt-get" \
	       "install" $$missing "(the benches skip them meanwhile)" >&2; exit 0; fi; \
	echo "installing $$(echo $$missing) (Debian packages) for the benchmarks"; \
	echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
	policy=; [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; \
	  chmod 755 /usr/sbin/policy-rc.d; policy=1; }; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	  $$missing >/dev/null; status=$$?; \
	[ -z "$$policy" ] || rm -f /usr/sbin/policy-rc.d; exit $$status

bench: bench-tools
	$(BIN)/python bench/splice.py --quick
	$(BIN)/python bench/smtp.py --quick
	$(BIN)/python bench/imap.py --quick
	$(BIN)/python bench/load.py --quick
	$(BIN)/python bench/report.py --quick

bench-full: bench-tools
	$(BIN)/python bench/splice.py
	$(BIN)/python bench/smtp.py
	$(BIN)/python bench/imap.py
	$(BIN)/python bench/load.py
	$(BIN)/python bench/report.py

clean:
	rm -rf $(VENV) .venv-3.13 .pytest_cache .hypothesis fuzz/logs
