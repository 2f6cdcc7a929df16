# The commands people type. `make test` is what CI runs (via .ci/run).
SHELL := bash
CARGO ?= cargo
BIN := target/debug/portico
APT_PACKAGES := nftables iproute2 conntrack bind9-dnsutils dnsperf nsd arping ndisc6

.PHONY: all deps build test test-only lint fmt demo bench bench-dns bench-local fuzz crds check-generated check-chart image e2e clean

all: build

## deps: install what building and testing need (idempotent; Debian/Ubuntu as root)
deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "warning: missing Debian packages:$$missing (install them as root; tests that need them will skip)"; \
	  fi; \
	fi
	@command -v $(CARGO) >/dev/null || { echo "cargo is required (https://rustup.rs)"; exit 1; }
	@$(CARGO) fmt --version >/dev/null 2>&1 || rustup component add rustfmt
	@$(CARGO) clippy --version >/dev/null 2>&1 || rustup component add clippy

## build: the portico binary and every crate
build:
	$(CARGO) build --workspace --all-targets

## test: deps, formatting, lints, every test, the generated-file drift check and the chart check
test: deps lint test-only check-generated check-chart

test-only:
	$(CARGO) test --workspace --all-targets
	$(CARGO) test --workspace --doc
	# The real-packet dataplane tests again, through the netlink backend.
	PORTICO_DATAPLANE_BACKEND=netlink $(CARGO) test --workspace --test packets --test fullsync

## lint: rustfmt and clippy, warnings are errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## demo: portico local on the bundled lab example
demo:
	$(CARGO) build --bin portico
	$(BIN) local -f examples/lab.yaml \
	  --service-cluster-ip-range 10.96.0.0/12 --cluster-cidr 20.96.0.0/12 \
	  --show services,events
	@echo
	@echo "Next: how a packet reaches api-tester-lb, from name to pod (docs/explain-lab.svg is its picture):"
	@echo "  $(BIN) explain default/api-tester-lb -f examples/lab.yaml --cluster-cidr 20.96.0.0/12 --node k8s-worker1"

## bench: criterion and scale benchmarks (results go in docs/benchmarks.md)
bench:
	$(CARGO) bench -p portico-ipam --bench allocate -- --warm-up-time 1 --measurement-time 3
	$(CARGO) bench -p portico --bench endpointslices
	$(CARGO) bench -p portico-controllers --bench lbipam
	$(CARGO) bench -p portico-dataplane --bench dataplane
	$(CARGO) bench -p portico --bench failover
	$(CARGO) build --release --bin portico
	scripts/bench-local.py target/release/portico 5000 50000
	scripts/bench-dns.sh

## fuzz: hostile DNS requests and manifests, many cases (make test runs a few hundred)
fuzz:
	PORTICO_FUZZ_CASES=$${PORTICO_FUZZ_CASES:-100000} $(CARGO) test --release -p portico-dns hostile
	PORTICO_FUZZ_CASES=$${PORTICO_FUZZ_CASES:-100000} $(CARGO) test --release -p portico-local --test hostile

## bench-local: the whole portico local pipeline at 5,000 and 50,000 Services (time, memory; --dataplane as root)
bench-local:
	$(CARGO) build --release --bin portico
	scripts/bench-local.py target/release/portico 5000 50000

## bench-dns: dnsperf against Portico's DNS server and NSD on the same zone (servers on CPU 0, dnsperf on CPU 1)
bench-dns: deps
	scripts/bench-dns.sh

## crds: regenerate the CRD YAML in crds/ and in the chart
crds:
	$(CARGO) build --bin portico
	rm -f crds/*.yaml charts/portico/crds/*.yaml
	mkdir -p charts/portico/crds
	$(BIN) crds --out-dir crds
	$(BIN) crds --out-dir charts/portico/crds

## check-generated: fail when generated files differ from what is committed
check-generated:
	$(CARGO) build --bin portico
	scripts/check-generated.sh $(BIN)

## check-chart: helm lint + helm template (default and full values, Helm 3 and 4), validated offline against the Kubernetes schemas and the CRDs
check-chart:
	$(CARGO) build --bin portico
	scripts/check-chart.sh

IMAGE ?= portico
NODE_IMAGE ?= portico-node
TAG ?= dev

## image: build the portico and portico-node images (needs Docker)
image:
	@command -v docker >/dev/null || { echo "make image needs Docker (https://docs.docker.com/engine/install/)"; exit 1; }
	docker build --target portico -t $(IMAGE):$(TAG) .
	docker build --target portico-node -t $(NODE_IMAGE):$(TAG) .

## e2e: kind cluster without kube-proxy, the images loaded, the chart installed, the end-to-end tests run (needs Docker, kind, kubectl)
e2e:
	tests/e2e/run.sh

clean:
	$(CARGO) clean
