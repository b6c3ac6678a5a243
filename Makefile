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

BPF_DIR := detector/bpf
BPF_SRC := $(wildcard $(BPF_DIR)/*.bpf.c)
BPF_OBJ := $(BPF_SRC:.bpf.c=.bpf.o)

# The admission path compiled with mypyc: the same typed source, built into .so files beside
# it (git-ignored), which Python imports before the .py. A review costs about two thirds as
# much (README, Design). webhook/__init__.py refuses a build older than its source.
COMPILED := webhook/podspecs.py webhook/policy.py webhook/hardening.py webhook/review.py
COMPILED_STAMP := build/compiled.stamp
MYPYC_BUILD := import sys; from mypyc.build import mypycify; from setuptools import setup; \
	setup(name="podlock-compiled", script_args=["--quiet", "build_ext", "--inplace", \
	"--build-temp", "build/mypyc"], ext_modules=mypycify(sys.argv[1:], group_name="webhook._compiled"))

.PHONY: run test lint typecheck unit bench bpf compile system-deps bench-deps venv clean \
	helm-deps deploy-manifests

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

$(COMPILED_STAMP): $(COMPILED) webhook/config.py webhook/projection.py $(STAMP) | system-deps
	rm -f webhook/*.so
	$(BIN)/python -W ignore -c '$(MYPYC_BUILD)' $(COMPILED)
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

# Helm for the deploy tests (helm lint, helm template): built from the Go module proxy at the
# version tests/helm/go.mod pins, into a cache outside the checkout keyed by that version, so
# only a version change rebuilds; tests/deploy finds it there the same way. A failed build fails make.
HELM_VERSION := $(shell awk '$$1 == "require" && $$2 == "helm.sh/helm/v4" {print $$3}' tests/helm/go.mod)
HELM_BIN := $(HOME)/.cache/podlock/helm-$(HELM_VERSION)

helm-deps:
	@test -n "$(HELM_VERSION)" || { echo "cannot read Helm's version from tests/helm/go.mod"; exit 1; }
	@if ! test -x $(HELM_BIN)/helm; then \
	  echo "building Helm $(HELM_VERSION) into $(HELM_BIN)"; \
	  rm -rf $(HELM_BIN).tmp && mkdir -p $(HELM_BIN).tmp && \
	  (cd tests/helm && go build -trimpath -ldflags '-s -w -X helm.sh/helm/v4/internal/version.version=$(HELM_VERSION)' \
	    -o $(HELM_BIN).tmp/helm helm.sh/helm/v4/cmd/helm) && \
	  rm -rf $(HELM_BIN) && mv $(HELM_BIN).tmp $(HELM_BIN); \
	fi

unit: helm-deps  # the deploy tests lint and render the chart

# deploy/base and deploy/overlays are the Helm chart rendered (tests/support/deploy_render.py says how);
# run this after editing the chart.
deploy-manifests: helm-deps $(STAMP)
	$(BIN)/python tests/support/deploy_render.py

$(BPF_DIR)/vmlinux.h: | system-deps
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > $@.tmp && mv $@.tmp $@

$(BPF_DIR)/%.bpf.o: $(BPF_DIR)/%.bpf.c $(wildcard $(BPF_DIR)/*.h) $(BPF_DIR)/vmlinux.h
	clang -g -O2 -Wall -Werror -target bpf -D__TARGET_ARCH_x86 -I$(BPF_DIR) -c $< -o $@

bpf: system-deps $(BPF_DIR)/vmlinux.h $(BPF_OBJ)

lint: $(STAMP)
	$(BIN)/ruff check webhook detector certs tests
	$(BIN)/ruff format --check webhook detector certs tests

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
	rm -rf $(VENV) $(CERTS) $(BPF_DIR)/*.o $(BPF_DIR)/vmlinux.h build webhook/*.so
