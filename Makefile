# podlock — the two set-up commands a newcomer needs are `make run` and `make test`.
# Everything the project needs is installed from here: Debian packages (we run as root),
# then a project-local virtualenv.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CERTS := .certs

# Debian packages: venv support for Debian's python3, a C compiler and Python headers for the
# compiled admission path, the eBPF toolchain, and container runtimes for the detector's
# end-to-end tests; the benchmarks also need a load tool.
APT_PACKAGES := python3-venv python3-dev gcc clang llvm libbpf-dev bpftool runc containerd \
	busybox-static umoci
BENCH_APT_PACKAGES := wrk
IMAGE_APT_PACKAGES := mmdebstrap

BPF_DIR := detector/bpf
BPF_SRC := $(wildcard $(BPF_DIR)/*.bpf.c)
BPF_OBJ := $(BPF_SRC:.bpf.c=.bpf.o)

# The admission path compiled with mypyc: the same typed source, built into .so files beside
# it (git-ignored), which Python imports before the .py. A review costs about two thirds as
# much (README, Design). webhook/__init__.py refuses a build older than its source.
COMPILED := webhook/podspecs.py webhook/policy.py webhook/hardening.py webhook/review.py
# setup.py reads this list and builds the same extensions into the wheel (make wheel).
COMPILED_STAMP := build/compiled.stamp

.PHONY: run test lint typecheck unit bench bpf compile system-deps bench-deps venv clean wheel image

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

$(COMPILED_STAMP): $(COMPILED) webhook/config.py webhook/projection.py setup.py $(STAMP) | system-deps
	rm -f webhook/*.so
	$(BIN)/python -W ignore setup.py --quiet build_ext --inplace --build-temp build/mypyc
	touch webhook/*.so $@  # build_ext keeps the times of an unchanged build

# The stamp alone would not notice .so files deleted by hand (to run the plain source for a
# while): a missing one makes the stamp stale too.
compile:
	@for module in $(COMPILED:.py=); do ls $$module.*.so >/dev/null 2>&1 || rm -f $(COMPILED_STAMP); done
	@$(MAKE) --no-print-directory $(COMPILED_STAMP)

# Installs only what is missing, so a machine that has everything pays nothing.
apt_install = @missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

system-deps:
	$(call apt_install,$(APT_PACKAGES))

bench-deps:
	$(call apt_install,$(BENCH_APT_PACKAGES))

$(BPF_DIR)/vmlinux.h: | system-deps
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > $@.tmp && mv $@.tmp $@

$(BPF_DIR)/%.bpf.o: $(BPF_DIR)/%.bpf.c $(wildcard $(BPF_DIR)/*.h) $(BPF_DIR)/vmlinux.h
	clang -g -O2 -Wall -Werror -target bpf -D__TARGET_ARCH_x86 -fdebug-prefix-map=$(CURDIR)=. \
	  -I$(BPF_DIR) -c $< -o $@
	llvm-strip -g $@  # libbpf needs BTF, not DWARF: smaller, and no build path in the bytes

bpf: system-deps $(BPF_DIR)/vmlinux.h $(BPF_OBJ)

# dist/podlock-<version>-cp311-cp311-linux_x86_64.whl: the compiled admission path and the BPF
# object inside (setup.py). Dated by the commit, so two builds of one commit are the same bytes.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 315532800)
export SOURCE_DATE_EPOCH
wheel: system-deps $(STAMP) bpf
	rm -rf build/lib.* build/bdist.* dist/*.whl
	$(BIN)/pip wheel --quiet --no-deps --wheel-dir dist .

# dist/podlock-<version>.oci.tar, image localhost/podlock:<version>, built from Debian packages
# and the wheel without any registry (deploy/image/build.sh says how).
image: wheel
	$(call apt_install,$(IMAGE_APT_PACKAGES))
	deploy/image/build.sh $(BIN)/pip

lint: $(STAMP)
	$(BIN)/ruff check webhook detector certs tests setup.py
	$(BIN)/ruff format --check webhook detector certs tests setup.py

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) bpf compile
	PODLOCK_COMPILED=1 $(BIN)/pytest

test: system-deps $(STAMP) bpf compile lint typecheck unit

# Development certificates (git-ignored) on first run, then the webhook on https://127.0.0.1:8443.
run: system-deps $(STAMP) compile
	@test -f $(CERTS)/tls.crt -a -f $(CERTS)/tls.key || \
	  $(BIN)/podlock certs generate --out $(CERTS) --host 127.0.0.1 --host localhost
	$(BIN)/podlock serve --bind 127.0.0.1:8443 --cert $(CERTS)/tls.crt --key $(CERTS)/tls.key

bench: system-deps bench-deps $(STAMP) bpf compile
	$(BIN)/python tests/bench/run_all.py

clean:
	rm -rf $(VENV) $(CERTS) $(BPF_DIR)/*.o $(BPF_DIR)/vmlinux.h build dist webhook/*.so
