# The two commands a newcomer needs: `make demo` and `make test`.
# Both set everything up from scratch (a local .venv with the project installed).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test lint typecheck bench bench-instructions bench-instrumentation chaos install clean generate services

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,redis,sqlalchemy,embedded,web,demo,doctor,tenacity,testing,prometheus,otel,structlog]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/dbresilience demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/ruff format --check src tests benchmarks tools
	$(BIN)/python tools/async_to_sync.py --check

# regenerate the sync twins from their async sources (see tools/async_to_sync.py)
generate: $(STAMP)
	$(BIN)/python tools/async_to_sync.py

typecheck: $(STAMP)
	$(BIN)/mypy

# the servers the tests start themselves: PgBouncer from Debian's packages when missing (as root;
# otherwise its tests skip, or fail under CI=true, naming it)
services:
	@command -v pgbouncer >/dev/null 2>&1 || test -x /usr/sbin/pgbouncer || \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing pgbouncer (apt-get install -y pgbouncer)"; \
	    (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null 2>&1 || \
	     (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer)); \
	  else \
	    echo "pgbouncer is missing and cannot be installed here (needs root and apt-get): its tests skip"; \
	  fi

test: lint typecheck services
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# a soak under real faults (default 10 minutes; CI runs a 60 s one in the test suite)
CHAOS_SECONDS ?= 600
chaos: $(STAMP)
	$(BIN)/dbresilience chaos --seconds $(CHAOS_SECONDS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks

# instructions per call (callgrind) against an earlier commit: make bench-instructions REV=abc123
REV ?= HEAD~1
bench-instructions: $(STAMP)
	$(BIN)/python -m benchmarks.instructions $(REV)

# instructions per call with no hook, Prometheus and OpenTelemetry on (callgrind)
bench-instrumentation: $(STAMP)
	$(BIN)/python -m benchmarks.instrumentation

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
