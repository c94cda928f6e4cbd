# ccup: `make demo` and `make test` work on a fresh clone (they install first).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch 2.14.1 / torchvision 0.29.1 are the pair that import together here (see README)
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: install test demo lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check $(TORCH_PINS)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev,plot,transformers,audit]' $(TORCH_PINS)
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest

demo: install
	rm -rf demo-out
	$(BIN)/ccup unlearn --forget sandal,sneaker --alpha 1.0 --out demo-out/

lint: install
	$(BIN)/ruff check ccup_cli tests scripts

clean:
	rm -rf demo-out .pytest_cache .ruff_cache build *.egg-info
