# `make run`: set up and run the default pipeline.  `make test`: set up and run every test (CI).
# `make test-fast`: set up and run the tests not marked slow (pytest -m "not slow").
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# so that the `python -m mmdistill.stages.X` commands of dvc.yaml run the venv's python
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test test-fast setup data

run: setup data
	dvc repro
	dvc metrics show

test: setup
	$(BIN)/python -m pytest -q -n auto tests

test-fast: setup
	$(BIN)/python -m pytest -q -n auto -m "not slow" tests

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

# Installs Debian's dataset-fashion-mnist when params.yaml points at its (missing) directory.
data: setup
	@src=$$($(BIN)/python -c "import yaml; print(yaml.safe_load(open('params.yaml'))['prepare']['source'])"); \
	if [ "$$src" = /usr/share/datasets/fashion-mnist ] && [ ! -e "$$src/train-images-idx3-ubyte.gz" ]; then \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist; \
	elif [ ! -d "$$src" ]; then \
		echo "prepare.source=$$src does not exist: point it at the Fashion-MNIST idx files" >&2; exit 1; \
	fi
