# Set-up and main jobs of TokenBits. Everything installs into .venv from scratch, at the
# versions pinned in constraints.txt.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LATEST := .venv-latest

# The repository root must never come first on sys.path: its folders kernels/, reference/
# and conformance/ would shadow installed packages of the same name (transformers imports
# the `kernels` package). Console scripts (tkb, pytest) put their own bin/ folder first;
# `python -m` and `python -c` put the current folder first, so they run here with -P
# (tests/test_environment.py checks every recipe).
# Every pip call, and the build's isolated environment (setuptools), take the pinned versions.
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
# setuptools tells every editable install to beware of same-named folders in the working
# directory; the rule above is how this project heeds it, so the notice is not shown.
EDITABLE := PYTHONWARNINGS="ignore:Editable installation"

.PHONY: demo test test-latest constraints bench fuzz fuzz-native native syntax conformance clean

# the CPU build of torch first: an unpinned torch would pull the CUDA packages;
# triton (the gpu extra) runs the kernel tests in its interpreter on the CPU
# (1): the venv; (2): variables for pip (test-latest lifts the pins)
define install
	$(PY) -P -m venv $(1)
	$(2) $(1)/bin/pip install -q --upgrade pip setuptools
	$(2) $(1)/bin/pip install -q torch==2.13.0
	$(2) $(EDITABLE) $(1)/bin/pip install -q -e '.[realdata,test,io,gpu]'
endef

$(BIN)/tkb: pyproject.toml constraints.txt
	$(call install,$(VENV))
	touch $@

demo: $(BIN)/tkb          ## encode real ViT tokens at a few qualities, compare with float16/int8/int4
	$(BIN)/tkb demo

# libtkb is built by the install (setup.py); rebuilt here when its sources change (a
# machine without a C compiler keeps going: the native tests are then skipped)
NATIVE_SRC := $(wildcard native/src/*.c native/src/*.h native/include/*.h native/tools/*.c)
native/python/libtkb.so: $(NATIVE_SRC) | $(BIN)/tkb
	-$(BIN)/python -P native/build.py native/python

test: $(BIN)/tkb native/python/libtkb.so   ## the whole test suite
	$(BIN)/pytest -q

test-latest:              ## the whole test suite against the newest releases (torch stays 2.13.0)
	rm -rf $(LATEST)
	$(call install,$(LATEST),PIP_CONSTRAINT=)
	$(LATEST)/bin/pytest -q

constraints:              ## after a green `make test-latest`: pin its versions in constraints.txt
	sed -n '/^#/p' constraints.txt > constraints.new
	$(LATEST)/bin/pip list --format=freeze | grep -iE '^(pip|setuptools)==' >> constraints.new
	$(LATEST)/bin/pip freeze --exclude-editable | sed 's/^torch==\([^+]*\)+cpu$$/torch==\1/' \
	    >> constraints.new
	mv constraints.new constraints.txt

bench: $(BIN)/tkb         ## size, fidelity and speed on real tokens (BENCHMARKS.md)
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 $(BIN)/tkb bench --json bench.json

fuzz: $(BIN)/tkb          ## 100 000 stream mutations against the decoder
	$(BIN)/python tests/fuzzing.py --n 100000

native: $(BIN)/tkb        ## rebuild libtkb and tkbdec (native/) in place; `tkb backends` shows them
	$(BIN)/python -P native/build.py native/python

FUZZ_SECONDS ?= 600
fuzz-native: $(BIN)/tkb   ## libFuzzer + ASan/UBSan on libtkb (needs clang); crashes kept in tests/regressions/
	$(BIN)/python -P native/fuzz/fuzz.py --seconds $(FUZZ_SECONDS)

conformance: $(BIN)/tkb   ## regenerate the conformance suite, then run the reference decoder on it
	$(BIN)/tkb conformance reference
	$(BIN)/tkb conformance run --decoder reference --coverage

syntax: $(BIN)/tkb        ## print the syntax tables that spec/5-syntax.md must contain
	$(BIN)/python -P -m tokenbits.syntax

clean:
	rm -rf $(VENV) $(LATEST) *.egg-info .pytest_cache .hypothesis native/build \
	    native/python/libtkb.so native/python/tkbdec
