# polelink: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
DEMO_CLIP = var/demo/clip.mp4

.PHONY: demo test test-clock lint docs bench clean help wheelhouse pi-lock pi-test pi-bench

help:
	@echo "make demo   - set up and run everything on the simulator: camera, DALI bus, broker, dashboard, agent"
	@echo "              (NODES=3: also three MicroPython lamp nodes; DURATION=60: stop after 60 s)"
	@echo "make test   - lint (ruff) and the whole test suite (pytest, WORKERS=2 processes;"
	@echo "              TESTS='tests/test_x.py ...': only those)"
	@echo "make test-clock - the suite with the machine's clock at 5 other hours, dates and zones"
	@echo "              (about an hour; TESTS='tests/test_x.py ...': only those files)"
	@echo "make docs   - the documentation site in var/site (mkdocs, strict: a broken link fails)"
	@echo "make bench  - pipeline and accuracy benchmarks"
	@echo "make wheelhouse - the Pi's offline aarch64 wheelhouse in var/wheelhouse/aarch64 (needs the index)"
	@echo "make pi-test    - (root) install it offline in an emulated arm64 Bookworm root and count there"
	@echo "make pi-bench   - (root) agent count emulated on arm64 vs this machine, as a ratio"
	@echo "make pi-lock    - re-pin deploy/pi/requirements-bookworm-arm64.txt from setup.cfg"

$(BIN)/agent: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,demo,node]'
	@touch $@

$(DEMO_CLIP): | $(BIN)/agent
	$(BIN)/python -m sim.traffic --out $(DEMO_CLIP) --seconds 120 --seed 1

demo: $(BIN)/agent $(DEMO_CLIP)
	$(BIN)/python -m sim.demo $(if $(DURATION),--duration $(DURATION)) $(if $(NODES),--nodes $(NODES))

lint: $(BIN)/agent
	$(BIN)/ruff check .

# Two workers (pytest-xdist): most tests wait on processes (the agent, brokers, emulators,
# MicroPython), so two run side by side in about half the time on 2 cores. WORKERS=0: one
# process; TESTS: only those files or test ids. The 10 slowest tests and the time taken
# are printed at the end.
WORKERS ?= 2
TESTS ?=
test: lint
	@t0=$$(date +%s); $(BIN)/python -m pytest -q -n $(WORKERS) --dist worksteal --durations=10 $(TESTS); \
	rc=$$?; echo "make test: pytest took $$(( $$(date +%s) - t0 )) s (budget: 25 min on 2 cores)"; \
	exit $$rc

# No test may depend on when it runs: the suite (or TESTS) at midnight UTC, sunrise, noon
# UTC and sunset, each in another time zone, and 5 minutes before Europe's clocks go forward
# (tests/clockshift: the wall clock shifted for the tests and every process they start).
test-clock: $(BIN)/agent
	$(BIN)/python -m tests.clockshift --campaign -- \
		$(BIN)/python -m pytest -q -p no:cacheprovider -n $(WORKERS) --dist worksteal $(TESTS)

# The documentation site (docs/, mkdocs.yml): the card reference is written again from the
# loader first, then the site is built in strict mode (any warning, broken link or anchor
# fails). Open var/site/index.html, or `$(BIN)/mkdocs serve` for a live preview.
docs: $(BIN)/agent
	$(BIN)/agent schema --card --markdown > docs/models/card-reference.md
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet
	@echo "make docs: var/site/index.html"

bench: $(BIN)/agent
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/accuracy.py

# The agent on a Pi, offline (README: For technicians).
wheelhouse: $(BIN)/agent
	$(BIN)/python -m deploy.pi.wheelhouse

pi-lock: $(BIN)/agent
	$(BIN)/python -m deploy.pi.lock

pi-test: $(BIN)/agent
	POLELINK_ARM64_TEST=1 $(BIN)/python -m pytest -q -rs tests/test_pi_arm64.py

pi-bench: $(BIN)/agent
	$(BIN)/python bench/pi_arm64.py

clean:
	rm -rf $(VENV) var build *.egg-info .pytest_cache .ruff_cache
