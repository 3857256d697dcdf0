# lowbw: `make install` installs the runtime, `make demo` runs the stack, `make test` runs every test.
VENV ?= .venv
STAMP := $(VENV)/.installed

.PHONY: install test demo lint typecheck bench clean

# Runtime only: .venv with lowbw and its dependencies (aiocoap, aiohttp, paho-mqtt, ...),
# no test stack (Synapse, MicroPython, mypy) and no Debian packages. `make test` adds those.
install:
	VENV=$(VENV) LOWBW_INSTALL=runtime scripts/bootstrap.sh
	@echo "installed: $(VENV)/bin/lowbw (try $(VENV)/bin/lowbw --help)"

$(STAMP): pyproject.toml scripts/bootstrap.sh
	VENV=$(VENV) scripts/bootstrap.sh
	touch $@

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

test: $(STAMP) lint typecheck
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(VENV)/bin/python bench/wire_bytes.py
	$(VENV)/bin/python bench/frozen_size.py
	$(VENV)/bin/python bench/proxy_load.py --quick
	$(VENV)/bin/python bench/device.py --quick
	$(VENV)/bin/python bench/body_compression.py
	$(VENV)/bin/python bench/chat_session.py

# Local Synapse + proxy + radio_sim at 100 bit/s + a MicroPython sensor; Ctrl-C stops it all.
demo: $(STAMP)
	$(VENV)/bin/python scripts/demo.py $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .stubs .mypy_cache .ruff_cache .hypothesis
