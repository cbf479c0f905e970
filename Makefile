# The README's commands. Each target builds .venv when it is missing or stale, then runs.
#   make run   [ARGS="--steps 500"]   train the default model on the embedded Danish sample
#   make test  [ARGS="-k tokenizer"]  run the test suite (TEST_JOBS=2 workers, one per file)
#   make bench [ARGS=...]             run benchmarks/throughput.py
#   make docs                         build the documentation site into site/ (mkdocs.yml)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PLUGIN_DIRS := $(sort $(dir $(wildcard plugins/*/pyproject.toml)))
TEST_JOBS ?= 2

.PHONY: run test bench docs lint format clean FORCE

run: $(VENV)/.installed
	$(BIN)/klm run $(ARGS)

test: $(VENV)/.installed
	$(BIN)/pytest -q -n $(TEST_JOBS) --dist loadfile $(ARGS)

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/throughput.py $(ARGS)

docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict $(ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(VENV)/.installed
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

# Rewritten only when the set of plugin packages changes, so adding or removing one
# makes the venv stale.
$(VENV)/.plugins: FORCE
	@mkdir -p $(VENV)
	@echo "$(PLUGIN_DIRS)" | cmp -s - $@ || echo "$(PLUGIN_DIRS)" > $@

# torch first, pinned: the CPU build on this machine. Then the project and every plugin,
# editable, so a change to any of them needs no reinstall.
$(VENV)/.installed: pyproject.toml $(VENV)/.plugins $(addsuffix pyproject.toml,$(PLUGIN_DIRS))
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q --no-build-isolation -e '.[dev]' \
		$(foreach p,$(PLUGIN_DIRS),-e ./$(p))
	touch $@

clean:
	rm -rf $(VENV)
