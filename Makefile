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
	busybox-static umoci containernetworking-plugins iptables iproute2 openssl
BENCH_APT_PACKAGES := wrk e2fsprogs
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

.PHONY: run test lint typecheck unit bench bpf compile system-deps bench-deps venv clean wheel image \
	cluster-deps helm-deps deploy-manifests

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

# The integration cluster's binaries (tests/cluster): Kubernetes and etcd built from the Go module
# proxy at the versions their wrapper modules pin, into a cache outside the checkout keyed by
# version, so a clean clone reuses them and only a version change rebuilds (the first build takes
# about 15 minutes on 2 cores; later ones reuse Go's build cache). A failed build fails make.
CLUSTER_MODULES := tests/cluster
K8S_VERSION := $(shell awk '$$1 == "require" && $$2 == "k8s.io/kubernetes" {print $$3}' $(CLUSTER_MODULES)/k8s/go.mod)
ETCD_VERSION := $(shell awk '$$1 == "require" && $$2 == "go.etcd.io/etcd/server/v3" {print $$3}' $(CLUSTER_MODULES)/etcd/go.mod)
CLUSTER_CACHE := $(HOME)/.cache/podlock
K8S_BIN := $(CLUSTER_CACHE)/k8s-$(K8S_VERSION)
ETCD_BIN := $(CLUSTER_CACHE)/etcd-$(ETCD_VERSION)
K8S_COMMANDS := kube-apiserver kube-controller-manager kube-scheduler kubelet
K8S_VERSION_PARTS := $(subst ., ,$(K8S_VERSION:v%=%))
K8S_LDFLAGS := -s -w -X k8s.io/component-base/version.gitVersion=$(K8S_VERSION) \
	-X k8s.io/component-base/version.gitMajor=$(word 1,$(K8S_VERSION_PARTS)) \
	-X k8s.io/component-base/version.gitMinor=$(word 2,$(K8S_VERSION_PARTS)) \
	-X k8s.io/component-base/version.gitTreeState=clean

cluster-deps: system-deps
	@test -n "$(K8S_VERSION)" -a -n "$(ETCD_VERSION)" || { echo "cannot read the versions from $(CLUSTER_MODULES)/*/go.mod"; exit 1; }
	@if ! (cd $(K8S_BIN) 2>/dev/null && ls $(K8S_COMMANDS) >/dev/null 2>&1); then \
	  echo "building Kubernetes $(K8S_VERSION) into $(K8S_BIN)"; \
	  rm -rf $(K8S_BIN).tmp && mkdir -p $(K8S_BIN).tmp && \
	  (cd $(CLUSTER_MODULES)/k8s && go build -trimpath -ldflags '$(K8S_LDFLAGS)' -o $(K8S_BIN).tmp/ \
	    $(addprefix k8s.io/kubernetes/cmd/,$(K8S_COMMANDS))) && \
	  rm -rf $(K8S_BIN) && mv $(K8S_BIN).tmp $(K8S_BIN); \
	fi
	@if ! test -x $(ETCD_BIN)/etcd; then \
	  echo "building etcd $(ETCD_VERSION) into $(ETCD_BIN)"; \
	  rm -rf $(ETCD_BIN).tmp && mkdir -p $(ETCD_BIN).tmp && \
	  (cd $(CLUSTER_MODULES)/etcd && go build -trimpath -ldflags '-s -w' -o $(ETCD_BIN).tmp/etcd .) && \
	  rm -rf $(ETCD_BIN) && mv $(ETCD_BIN).tmp $(ETCD_BIN); \
	fi

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

unit: $(STAMP) bpf compile cluster-deps
	PODLOCK_COMPILED=1 $(BIN)/pytest

test: system-deps cluster-deps $(STAMP) bpf compile lint typecheck unit

# Development certificates (git-ignored) on first run, then the webhook on https://127.0.0.1:8443.
run: system-deps $(STAMP) compile
	@test -f $(CERTS)/tls.crt -a -f $(CERTS)/tls.key || \
	  $(BIN)/podlock certs generate --out $(CERTS) --host 127.0.0.1 --host localhost
	$(BIN)/podlock serve --bind 127.0.0.1:8443 --cert $(CERTS)/tls.crt --key $(CERTS)/tls.key

bench: system-deps bench-deps $(STAMP) bpf compile
	$(BIN)/python tests/bench/run_all.py

clean:
	rm -rf $(VENV) $(CERTS) $(BPF_DIR)/*.o $(BPF_DIR)/vmlinux.h build dist webhook/*.so
