# Two commands for a newcomer: `make demo` and `make test`. Both set up .venv when needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= input/shopee-demo

.PHONY: setup demo test lint format clean kaggle-check gpu-check

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -r requirements.txt
	$(BIN)/pip install --no-deps -e .
	touch $@

setup: $(STAMP)

$(DEMO_DIR)/train.csv: | $(STAMP)
	$(BIN)/python -m shopee demo-data --out $(DEMO_DIR)

# The whole loop on the embedded demo data: data, baselines, two experiments on folds 0 and 1 with
# a short schedule (outputs in output/demo/; finished folds are not trained again), the matching
# rule tuned on their out-of-fold embeddings, the offline Kaggle kernel built from it and executed
# here on the demo test set, the lab diary (`shopee runs`) and a closing table of F1 figures.
DEMO_OUT ?= output/demo
DEMO_KERNEL ?= shopee-demo
KERNELS ?= kernels
KAGGLE_USER ?= $(or $(KAGGLE_USERNAME),your-kaggle-name)
DEMO_TRAIN = --data $(DEMO_DIR) --output $(DEMO_OUT)
demo: setup
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory $(DEMO_DIR)/train.csv && \
	$(BIN)/python -m shopee check-data --data $(DEMO_DIR) && \
	$(BIN)/python -m shopee baselines --data $(DEMO_DIR) && \
	for fold in 0 1; do \
	  $(BIN)/python exp/exp003.py --fold $$fold $(DEMO_TRAIN) --set epochs=2 || exit 1; \
	  $(BIN)/python exp/exp001.py --fold $$fold $(DEMO_TRAIN) --set epochs=1 || exit 1; \
	done && \
	$(BIN)/python -m shopee optimize-ensemble exp001 exp003 $(DEMO_TRAIN) --name demo --tfidf --phash && \
	$(BIN)/python -m shopee build-kernel --ensemble $(DEMO_OUT)/ensembles/demo.json --name $(DEMO_KERNEL) \
	  --user $(KAGGLE_USER) --out $(KERNELS) && \
	$(BIN)/python -m shopee run-kernel $(KERNELS)/$(DEMO_KERNEL) --data $(DEMO_DIR) && \
	$(BIN)/python -m shopee runs --output $(DEMO_OUT) && \
	$(BIN)/python -m shopee demo-summary --ensemble $(DEMO_OUT)/ensembles/demo.json \
	  --submission $(KERNELS)/$(DEMO_KERNEL)-run/working/submission.csv --labels $(DEMO_DIR)/test_labels.csv \
	  --kernel $(KERNELS)/$(DEMO_KERNEL) && \
	echo "make demo finished in $$(( $$(date +%s) - start )) s"

lint: setup
	$(BIN)/ruff check src tests exp
	$(BIN)/ruff format --check src tests exp

format: setup
	$(BIN)/ruff format src tests exp
	$(BIN)/ruff check --fix src tests exp

test: lint
	$(BIN)/python -m pytest

# The one prepared check for the first minutes on a GPU (README, "First run on a GPU"): the CUDA tests,
# a debug fold, a recipe's training step in fp16/bf16, data parallel, predict over every GPU, kNN
# backends and bench gpu, each timed; report in output/gpu-check/gpu-check.json. Without a GPU it
# says so in one line and exits 0.
gpu-check: setup
	$(BIN)/python -m shopee bench gpu-check --out output/gpu-check

# The demo kernel's notebook executed on Kaggle's library versions (requirements-kaggle.txt) in a
# second virtual environment with Python 3.12, as on Kaggle's 2026 image.
KAGGLE_VENV ?= .venv-kaggle
KAGGLE_PYTHON ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) python3.12)
KAGGLE_STAMP := $(KAGGLE_VENV)/.installed

$(KAGGLE_STAMP): requirements-kaggle.txt
	$(KAGGLE_PYTHON) -m venv $(KAGGLE_VENV)
	$(KAGGLE_VENV)/bin/pip install -r requirements-kaggle.txt
	touch $@

kaggle-check: setup $(KAGGLE_STAMP)
	SHOPEE_KAGGLE_PYTHON=$(abspath $(KAGGLE_VENV))/bin/python $(BIN)/python -m pytest -s -q tests/test_kaggle_image.py

clean:
	rm -rf $(VENV) $(KAGGLE_VENV) .pytest_cache .ruff_cache src/*.egg-info
