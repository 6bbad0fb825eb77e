# make demo / make test do all of their own set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test explore check lint typecheck bench clean zbar migrate

setup: $(STAMP) zbar migrate

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,ocr]'
	touch $(STAMP)

zbar:
	@sh scripts/ensure-zbar

migrate: $(STAMP)
	$(BIN)/cardbot db upgrade

demo: setup
	$(BIN)/cardbot demo

# Two workers: most end-to-end time is spent waiting on bot processes and databases.
# Hypothesis runs derandomized here (the "replay" profile, tests/conftest.py). pytest exits 5
# when it collected no test at all: that is a failure too, said in words.
test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile; status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	exit $$status

# Hypothesis searching for new failures: fresh random examples, many more of them, saved to
# .hypothesis/ (which `make test` then replays). Turn each one found into an @example.
explore: setup
	CARDBOT_HYPOTHESIS_PROFILE=explore $(BIN)/python -m pytest -q -n 2 --dist loadfile -m hypothesis

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

bench: setup
	$(BIN)/python bench/dialogue.py
	$(BIN)/python bench/vision.py ../shared/data/barcodes

clean:
	rm -rf $(VENV) var/*.db var/*.db-* .pytest_cache .mypy_cache .ruff_cache
