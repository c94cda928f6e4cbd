# ccup: `make demo` and `make test` work on a fresh clone (they install first).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch 2.14.1 / torchvision 0.29.1 are the pair that import together here (see docs/install.md)
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: install test demo lint bench clean

ACTIVATE := @echo "ccup is installed in .venv; to run the README's commands as written, first:  source .venv/bin/activate"

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check $(TORCH_PINS)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev,plot,transformers,audit,lit,docs]' $(TORCH_PINS)
	touch $(STAMP)
	$(ACTIVATE)

# two pytest-xdist workers: the tests are independent (each worker has its own temp, cache and HF folders);
# tests marked with one xdist_group run on one worker, so the images they share are encoded once
PYTEST_WORKERS ?= 2

test: install
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup

demo: install
	rm -rf demo-out
	$(BIN)/ccup unlearn --forget sandal,sneaker --alpha 1.0 --out demo-out/
	$(ACTIVATE)

# ruff, then the import contracts of pyproject.toml (layers only run downward; no cycles), then the docs
# site (mkdocs.yml) built with --strict into the gitignored site/: a broken link or anchor fails
lint: install
	$(BIN)/ruff check ccup_cli tests scripts
	$(BIN)/lint-imports
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site

clean:
	rm -rf demo-out site .pytest_cache .ruff_cache build *.egg-info
