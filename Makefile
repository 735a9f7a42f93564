# refreshbus — developer entry points. `make help` lists them.
SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
K8S_VERSION ?= v1.34.4
export K8S_VERSION
# Debian packages the tests and the demo run for real.
APT_PACKAGES := rabbitmq-server nginx openssl procps openjdk-17-jdk-headless maven git
PYTEST_ARGS ?=

##@ General

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make \033[36m<target>\033[0m\n"} /^[a-zA-Z0-9_-]+:.*?##/ { printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Setup

.PHONY: deps
deps: system-deps $(BIN)/.installed k8s-bins helm spring-app ## Install everything the tests need (idempotent)

.PHONY: system-deps
system-deps: ## Install Debian packages (RabbitMQ, nginx, openssl) if missing
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@# Debian starts a system-wide RabbitMQ and nginx on install; the tests run their own.
	@SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	 $$SUDO service rabbitmq-server stop >/dev/null 2>&1 || true; \
	 $$SUDO service nginx stop >/dev/null 2>&1 || true

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U 'pip>=25.1'
	$(BIN)/pip install -q -e '.[sidecar,operator]' --group test --group lint
	touch $@

.PHONY: k8s-bins
k8s-bins: ## Build kube-apiserver, etcd, kubectl $(K8S_VERSION) from the Go module proxy (cached)
	bash hack/build-k8s-binaries.sh kube-apiserver etcd kubectl

.PHONY: spring-app
spring-app: system-deps ## Build the Spring Boot bus member of the Spring tests with Maven (pinned, cached)
	bash hack/build-spring-app.sh

.PHONY: helm
helm: ## Build helm from the Go module proxy (pinned, cached)
	bash hack/build-helm.sh

##@ Development

.PHONY: lint
lint: $(BIN)/.installed ## ruff, mypy (core packages), import-linter layering contracts
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

.PHONY: chart-sync
chart-sync: ## Copy crds/ into the chart and regenerate values.schema.json + the chart README table
	bash hack/sync-chart-crds.sh
	$(BIN)/python hack/gen-values-schema.py

.PHONY: chart-check
chart-check: $(BIN)/.installed ## Fail if the chart's CRDs, schema or README table drifted from their sources
	bash hack/sync-chart-crds.sh --check
	$(BIN)/python hack/gen-values-schema.py --check

# The real-node suite (tests/e2e/node: kubelet + containerd on this machine) needs root.
# Its images are built first (`images`: a cold buildah build takes minutes, more than a
# test's timeout; the suite's own build is then a cache hit).
# It runs whenever it can (root) and always under CI=true, where a failure to bring the
# node up fails the run instead of being skipped. Override with E2E_NODE=0|1.
E2E_NODE ?= $(shell [ "$$(id -u)" = 0 ] || [ "$$CI" = true ] && echo 1 || echo 0)

.PHONY: test
test: deps lint $(if $(filter 1,$(E2E_NODE)),node-bins node-addons reloader images) ## THE test command: install what is needed, lint, run every test
	@[ "$(E2E_NODE)" = 1 ] || echo "note: not root, so the real-node suite (tests/e2e/node) is not collected; run 'sudo make e2e'"
	REFRESHBUS_E2E_NODE=$(E2E_NODE) $(BIN)/pytest $(PYTEST_ARGS)

.PHONY: test-unit
test-unit: $(BIN)/.installed ## Unit tests only (no broker, no API server)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

.PHONY: test-integration
test-integration: deps ## Integration and end-to-end tests (real RabbitMQ + kube-apiserver)
	$(BIN)/pytest -m "integration or e2e" $(PYTEST_ARGS)

##@ Demo

.PHONY: demo
demo: deps ## Run it: control plane, broker, operator, 3 pods with real sidecars + apps, one refresh (on the real node if cluster-up-node is up)
	REFRESHBUS_NODE_DIR=$(NODE_DIR) $(BIN)/python demo/demo.py

.PHONY: demo-down
demo-down: ## Stop what `make demo` left running (on the real node: helm uninstall + namespace; the node stays)
	REFRESHBUS_NODE_DIR=$(NODE_DIR) $(BIN)/python demo/demo.py down

##@ Benchmarks (figures go to docs/; never timed assertions in tests)

.PHONY: bench
bench: bench-sidecar bench-operator bench-autorefresh bench-e2e bench-scale ## Run every benchmark

.PHONY: bench-sidecar
bench-sidecar: deps ## Sidecar RSS, idle CPU, start-to-ready, event-to-signal latency (docs/sidecar.md)
	$(BIN)/python bench/sidecar_bench.py $(BENCH_ARGS)

.PHONY: bench-operator
bench-operator: deps ## Operator: apply -> all acks in status p50/p99 for 1/10/100 targets, RSS, API calls (docs/operator.md)
	$(BIN)/python bench/operator_bench.py $(BENCH_ARGS)

.PHONY: bench-autorefresh
bench-autorefresh: deps ## Auto-refresh watch scopes (namespace vs object), 200 ConfigMaps: connections, RSS, edit->refresh (docs/operator.md)
	$(BIN)/python bench/autorefresh_bench.py $(BENCH_ARGS)

.PHONY: bench-e2e
bench-e2e: deps ## 100 real sidecars + 100 real apps, auto-refresh: ConfigMap edit -> every app reloaded p50/p99, where the time goes, sidecar RSS (docs/sidecar.md)
	$(BIN)/python bench/e2e_bench.py $(BENCH_ARGS)

.PHONY: bench-scale
bench-scale: deps ## Operator at 100/1,000/5,000 targets with simulated sidecars: apply/edit -> all acks p50/p99, RSS, API requests, broker memory (docs/scale.md)
	$(BIN)/python bench/scale_bench.py $(BENCH_ARGS)

FAILOVER_PODS ?= 20
.PHONY: bench-broker-failover
bench-broker-failover: deps ## A node of a 3-node RabbitMQ cluster lost mid-refresh: failover and convergence times (docs/broker.md); FAILOVER_PODS=20
	REFRESHBUS_FAILOVER_PODS=$(FAILOVER_PODS) $(BIN)/pytest -q -s tests/e2e/test_broker_cluster.py

.PHONY: bench-sidecar-queues
bench-sidecar-queues: deps ## 3-node RabbitMQ cluster: 1,000 sidecar queues exclusive classic vs quorum (declare time, memory, idle CPU), ack queue classic vs quorum throughput (docs/broker.md)
	$(BIN)/python bench/sidecar_queue_bench.py $(BENCH_ARGS)

.PHONY: bench-vs-peers
bench-vs-peers: deps node-bins node-addons reloader ## refreshbus vs kubelet (default settings) vs Reloader on the real node, 10 pods: table + docs/vs-peers.png (root; ~12 min)
	$(BIN)/pip install -q --group bench
	$(BIN)/python bench/vs_peers_bench.py $(BENCH_ARGS)

.PHONY: fuzz
fuzz: deps ## A million bad messages to a real sidecar and operator, real refreshes going on (docs/reliability.md)
	$(BIN)/python bench/fuzz_bench.py $(FUZZ_ARGS)

##@ Chaos (fault injection against real components; docs/reliability.md)

CHAOS_ARGS ?=
.PHONY: chaos
chaos: deps ## Long seeded chaos run (200 rounds, 10 sidecars, 2 operator replicas); CHAOS_ARGS='--seed N --rounds N --sidecars N'
	PYTHONPATH=tests/testenv:tests/support:tests/chaos $(BIN)/python -m refreshbus_chaos $(CHAOS_ARGS)

##@ Local cluster

.PHONY: cluster-up
cluster-up: deps ## Start etcd + kube-apiserver + RabbitMQ on loopback, install the CRDs
	PYTHONPATH=tests/testenv $(BIN)/python -m refreshbus_testenv up

.PHONY: cluster-down
cluster-down: ## Stop what cluster-up started
	PYTHONPATH=tests/testenv $(BIN)/python -m refreshbus_testenv down

.PHONY: cluster-status
cluster-status: ## Is the local cluster up?
	PYTHONPATH=tests/testenv $(BIN)/python -m refreshbus_testenv status

##@ kind (for users with Docker; cannot run on machines without a Docker engine)

.PHONY: e2e-kind
e2e-kind: $(BIN)/.installed ## Run the end-to-end suite against the cluster in KUBECONFIG (e.g. kind)
	@test -n "$$KUBECONFIG" || { echo "set KUBECONFIG to a reachable cluster (e.g. kind create cluster)"; exit 2; }
	REFRESHBUS_EXISTING_CLUSTER=1 $(BIN)/pytest -m e2e $(PYTEST_ARGS)

# ---------------------------------------------------------------------------------------
# Real node and end-to-end suite (issue 6). Appended section, owned by the e2e work:
# a single-node cluster on this machine (kubelet, containerd, runc, CNI, kube-proxy, no
# Docker) and OCI images built without Docker. Needs root. See tests/e2e/node/conftest.py.
# ---------------------------------------------------------------------------------------
##@ Real node (kubelet + containerd on this machine; root)

NODE_DIR ?= .cluster/node
NODE_BINS := kube-apiserver etcd kubectl kube-controller-manager kube-scheduler kubelet kube-proxy

.PHONY: node-bins
node-bins: ## Build the node's binaries too (controller manager, scheduler, kubelet, kube-proxy; cached)
	bash hack/build-k8s-binaries.sh $(NODE_BINS)

.PHONY: reloader
reloader: ## Build stakater/Reloader (the vs-peers comparison's peer) from third_party/reloader (cached)
	bash hack/build-reloader.sh >/dev/null

.PHONY: node-addons
node-addons: $(BIN)/.installed ## Build the node's add-on images: CoreDNS + local-path-provisioner (pinned Go modules) and RabbitMQ (Debian's package); cached
	$(BIN)/python hack/build-images.py coredns local-path-provisioner rabbitmq

.PHONY: images
images: $(BIN)/.installed ## Build the operator + sidecar images from the Dockerfile (buildah) and the test images (cached; root)
	$(BIN)/python hack/build-images.py

.PHONY: images-pin
images-pin: $(BIN)/.installed ## Pin the Dockerfile's base to the digest of this machine's Debian bootstrap
	$(BIN)/python hack/build-images.py --pin

.PHONY: lock
lock: $(BIN)/.installed ## Regenerate requirements/*.txt (hashed locks of the images' dependencies) from pyproject.toml
	$(BIN)/pip install -q --group lock
	for extra in operator sidecar; do \
	  $(BIN)/pip-compile -q --strip-extras --generate-hashes --allow-unsafe --no-emit-index-url --no-emit-find-links \
	    --extra $$extra -o requirements/$$extra.txt pyproject.toml; \
	done
	$(BIN)/pip-compile -q --strip-extras --generate-hashes --allow-unsafe --no-emit-index-url --no-emit-find-links \
	  --build-deps-for wheel --only-build-deps -o requirements/build.txt pyproject.toml

.PHONY: cluster-up-node
cluster-up-node: deps node-bins node-addons ## Control plane + a real node + broker on the node address; images imported
	PYTHONPATH=tests/testenv $(BIN)/python -m refreshbus_testenv up --node --dir $(NODE_DIR)

.PHONY: cluster-down-node
cluster-down-node: ## Stop cluster-up-node (pods' containers, mounts, bridges, iptables rules included)
	PYTHONPATH=tests/testenv $(BIN)/python -m refreshbus_testenv down --dir $(NODE_DIR)

.PHONY: e2e
e2e: deps node-bins node-addons reloader images ## End-to-end suite in real pods on this machine (tests/e2e/node; helm install, faults)
	REFRESHBUS_E2E_NODE=1 $(BIN)/pytest tests/e2e/node $(PYTEST_ARGS)
