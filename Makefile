# polelink: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
DEMO_CLIP = var/demo/clip.mp4

.PHONY: demo test lint bench clean help

help:
	@echo "make demo   - set up and run everything on the simulator: camera, DALI bus, broker, dashboard, agent"
	@echo "make test   - lint (ruff) and the whole test suite (pytest)"
	@echo "make bench  - pipeline and accuracy benchmarks"

$(BIN)/agent: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,demo]'
	@touch $@

$(DEMO_CLIP): | $(BIN)/agent
	$(BIN)/python -m sim.traffic --out $(DEMO_CLIP) --seconds 120 --seed 1

demo: $(BIN)/agent $(DEMO_CLIP)
	$(BIN)/python -m sim.demo $(if $(DURATION),--duration $(DURATION))

lint: $(BIN)/agent
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q

bench: $(BIN)/agent
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/accuracy.py

clean:
	rm -rf $(VENV) var build *.egg-info .pytest_cache .ruff_cache
