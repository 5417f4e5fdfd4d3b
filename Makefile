# Set-up and main jobs of TokenBits. Everything installs into .venv from scratch.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test bench fuzz syntax conformance clean

$(BIN)/tkb: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU build of torch first: an unpinned torch would pull the CUDA packages;
	# triton (the gpu extra) runs the kernel tests in its interpreter on the CPU
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[realdata,test,io,gpu]'
	touch $@

demo: $(BIN)/tkb          ## encode real ViT tokens at a few qualities, compare with float16/int8/int4
	$(BIN)/tkb demo

test: $(BIN)/tkb          ## the whole test suite
	$(BIN)/python -m pytest -q

bench: $(BIN)/tkb         ## size, fidelity and speed on real tokens (BENCHMARKS.md)
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 $(BIN)/tkb bench --json bench.json

fuzz: $(BIN)/tkb          ## 100 000 stream mutations against the decoder
	$(BIN)/python tests/fuzzing.py --n 100000

conformance: $(BIN)/tkb   ## regenerate the conformance suite, then run the reference decoder on it
	$(BIN)/tkb conformance reference
	$(BIN)/tkb conformance run --decoder reference --coverage

syntax: $(BIN)/tkb        ## print the syntax tables that spec/5-syntax.md must contain
	$(BIN)/python -m tokenbits.syntax

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis
