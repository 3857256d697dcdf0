# lowbw: two commands. `make demo` runs the stack, `make test` runs every test.
VENV ?= .venv
STAMP := $(VENV)/.installed

.PHONY: test demo lint typecheck bench clean

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

demo: $(STAMP)
	@echo "make demo arrives with the device issue (#5): the proxy and the MicroPython device are not built yet."
	@echo "Today you can run: make test, make bench, and python -m radio_sim --help"
	@exit 2

clean:
	rm -rf $(VENV) .stubs .mypy_cache .ruff_cache .hypothesis
