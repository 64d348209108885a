# One entry point per job. `make test` is the README's test command; `make demo` the demo.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export GRPC_VERBOSITY ?= ERROR

.PHONY: setup test lint typecheck unit demo demo-up demo-down bench faults proto man clean install

$(STAMP): pyproject.toml
	scripts/setup-env "$(PYTHON)" "$(VENV)"
	touch $(STAMP)

setup: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check gateway devtools tests bench
	$(VENV)/bin/ruff format --check gateway devtools tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# Two workers, one per core: most of the suite waits on daemons, sockets and timers. Each
# worker runs whole files (--dist loadfile), so a module's daemons are still made once. The
# temporary root is short because Unix socket paths must stay under 108 bytes and xdist adds
# a directory per worker; it is removed when every test passed, kept to look at otherwise.
test: lint typecheck
	@root=$$(mktemp -d /tmp/xbgw-t.XXXXXX) && \
	$(PY) -m pytest -q -n 2 --dist loadfile --basetemp="$$root" tests; \
	status=$$?; if [ $$status -eq 0 ]; then rm -rf "$$root"; else echo "test files kept in $$root"; fi; \
	exit $$status

unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

proto: $(STAMP)
	$(PY) scripts/gen_proto.py

# The xbgw(1) manual page, generated from the command's parser (`make install` installs it).
man: $(STAMP)
	$(PY) -m devtools.manpage -o build/man/xbgw.1
	@echo "wrote build/man/xbgw.1 (read it: man -l build/man/xbgw.1)"

demo: $(STAMP)
	$(PY) -m devtools.demo

# The two demo gateways again, on what `make demo` left in demo-state/ (README: "After the
# demo"); demo-down stops them by the PIDs demo-up recorded.
demo-up: $(STAMP)
	$(PY) -m devtools.demo up

demo-down: $(STAMP)
	$(PY) -m devtools.demo down

bench: $(STAMP)
	$(PY) -m bench

# The fault suite (not in `make test`; runs as root: it mounts a tmpfs). SEED=N replays a run
# (default: a random seed, printed); several: SEED="1 2". TRANSFERS=N per seed (default 40).
SEED ?=
TRANSFERS ?= 40
faults: $(STAMP)
	$(PY) -m tests.faults --transfers $(TRANSFERS) $(foreach s,$(SEED),--seed $(s))

clean:
	rm -rf demo-state .pytest_cache .mypy_cache .ruff_cache

# The command, the systemd units, an example config, the man page and the .proto files of the
# local API: make install [DESTDIR=...] [PREFIX=...]
# (see scripts/install --help).
install:
	scripts/install
