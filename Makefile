# Two entry points for a fresh machine with Python 3.11: `make run` and `make test`.
# Both create .venv idempotently; `make test` also installs the Debian packages the tests use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
APT_PACKAGES := mosquitto mosquitto-clients mosquitto-dev libmosquitto-dev gcc chromium nodejs

.PHONY: run test venv system-deps lint typecheck bench clean gpu-check

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Debian packages: a real Mosquitto for interop tests (its headers and gcc build our client-id
# plugin), chromium for the Playwright UI tests,
# node for the unit tests of the page's JS modules.
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(if $(filter 0,$(shell id -u)),,sudo) apt-get update -q && \
	  $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -q $$missing; \
	fi

run: venv
	$(BIN)/ars up

test: venv system-deps
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

# On a machine with a GPU: time a fine-tune on CPU and CUDA, then the quick adaptation bench on CUDA.
gpu-check: venv
	mkdir -p .ars
	$(BIN)/ars bench finetune --json --out .ars/gpu-finetune.json
	$(BIN)/ars bench adaptation --json --quick --seed 1 --device cuda --out .ars/gpu-adaptation.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
