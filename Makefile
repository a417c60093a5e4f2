# upload-grant-operator — the two commands: `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
TESTENV := tools/testenv
# The reference `make image` gives the image (the io.containerd.image.name it
# is imported under). The test node's TESTENV_IMAGE (.testenv/env) names this
# image; in a pod spec the short upload-grant-operator:dev normalizes to it.
IMAGE ?= docker.io/library/upload-grant-operator:dev
# The example consumers' image (`make consumer-image`), run by tests/node_consumers.rs.
CONSUMER_IMAGE ?= docker.io/library/upload-grant-consumers:dev

PREFIX ?= $(HOME)/.local

.PHONY: all build release install-plugin image push push-target image-check consumer-image crds reference lint deny fresh-check disk-check test bench chaos demo demo-down docs testenv testenv-down testenv-build deps

all: build

deps:
	@tools/install-deps.sh

build:
	$(CARGO) build --all-targets

## release: the release binary exactly as the Dockerfile builds it
release:
	$(CARGO) build --release --locked --bin upload-grant-operator

## install-plugin: build `kubectl grant` and install it as $(PREFIX)/bin/kubectl-grant (PREFIX default ~/.local)
install-plugin:
	$(CARGO) build --release --locked --bin kubectl-grant
	install -d "$(PREFIX)/bin"
	install -m 0755 target/release/kubectl-grant "$(PREFIX)/bin/kubectl-grant"
	@echo "installed $(PREFIX)/bin/kubectl-grant; with $(PREFIX)/bin on PATH, run: kubectl grant --help"

## image: the Dockerfile's image without a container engine -> target/image/upload-grant-operator.tar
## (an OCI archive); also imported into the test node's containerd when it runs
image: deps release
	IMAGE=$(IMAGE) tools/image/build.sh

## push: make image, then push it to IMAGE=REGISTRY/REPOSITORY[:TAG] with crane (tools/image/push.sh,
## no container engine; credentials from ~/.docker/config.json); prints REPOSITORY@DIGEST. To the test
## environment's registry: make push IMAGE=$$TESTENV_IMAGE (after source .testenv/env)
push: push-target image
	tools/image/push.sh target/image/upload-grant-operator.tar $(IMAGE)

push-target:
	@case "$(IMAGE)" in docker.io/library/*) \
	  echo "make push: name the registry to push to: make push IMAGE=REGISTRY/REPOSITORY:TAG" >&2; exit 2;; esac

## image-check: the image matches the Dockerfile's runtime stage, is reproducible and runs (tests/image.rs)
image-check: image
	IMAGE=$(IMAGE) $(CARGO) test --test image -- --include-ignored

## consumer-image: curl, Python, Java, Node.js and the Go consumer on Debian 12 packages, with
## examples/ at /examples -> target/image/upload-grant-consumers.tar (an OCI archive); also imported
## into the test node's containerd when it runs (tests/node_consumers.rs imports it otherwise)
consumer-image: deps
	CONSUMER_IMAGE=$(CONSUMER_IMAGE) tools/image/consumers.sh

## crds: regenerate crds/ from the Rust types in src/api/
crds:
	$(CARGO) run --quiet --bin crdgen -- --out-dir crds
	$(CARGO) run --quiet --bin crdgen -- --out-dir charts/upload-grant-operator/files/crds

lint: deny
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	tools/hadolint.sh Dockerfile

## deny: cargo-deny's licenses, bans and sources checks (deny.toml). It reads `cargo metadata`, which
## needs every crate in Cargo.lock for every target platform, not just those this one builds: they
## are fetched first (--locked), then the check runs offline (no advisory database).
deny:
	$(CARGO) fetch --locked
	tools/cargo-deny.sh --offline --locked check licenses bans sources

## testenv-build: build kube-apiserver, etcd, kubectl, helm, the S3/STS server and the node's parts,
## and fetch promtool, into the cache
testenv-build: deps
	@$(TESTENV)/build.sh

## testenv: start the local control plane, S3 store and STS (writes .testenv/env)
testenv: deps
	@$(TESTENV)/up.sh

## testenv-down: stop everything `make testenv` started
testenv-down:
	@$(TESTENV)/down.sh

## fresh-check: deps, deny and hadolint from an empty CARGO_HOME and component cache, as on a new
## machine (tools/fresh-check.sh)
fresh-check:
	@tools/fresh-check.sh

## disk-check: fail at once if the disk cannot hold what make test builds (tools/disk-check.sh)
disk-check:
	@tools/disk-check.sh

## test: everything CI runs. The images come first: the node tests install
## the chart, which runs the operator's image, and run consumer pods (the
## tests push both archives to the environment's registry, which the node
## pulls from). Incremental caches are off: they speed an edit-and-rebuild
## loop, not one full run, and grow with every rebuild (a cold run writes
## 5 GiB under target/ without them; tools/disk-check.sh checks for room).
test: export CARGO_INCREMENTAL ?= 0
test: disk-check deps testenv-build lint fresh-check image consumer-image docs
	$(TESTENV)/with-env.sh $(CARGO) test --all-targets --no-fail-fast
	IMAGE=$(IMAGE) $(CARGO) test --test image -- --include-ignored

## reference: regenerate the book's generated pages (docs/src/cli.md: every command's --help;
## docs/src/values.md: the chart's values.yaml) from the binaries and the chart; tests/docs.rs fails when they drift
reference:
	$(CARGO) build --quiet --bin upload-grant-operator --bin kubectl-grant
	tools/reference.sh

## docs: the book in docs/ -> target/book (diagrams drawn by Graphviz; mdbook, built from crates.io on
## first use); tests/docs.rs opens every page in headless Chromium
docs:
	tools/docs.sh

## bench: benchmarks against the local environment -> bench/results/latest.md (not part of test)
bench: deps testenv-build
	@bench/run.sh

## chaos: the fault-injection suite against a local environment of its own (no node, 40 to 50
## minutes) -> bench/results/chaos.md (not part of test; its smoke subset is)
chaos: deps testenv-build
	@bench/chaos.sh

## demo: helm install the operator onto the local node, issue a grant, upload through it from a Job,
## read it back (root; about 30 minutes the first time; KEEP=1 leaves it running, demo-down stops it)
demo:
	@tools/demo.sh intro
	@$(MAKE) --no-print-directory deps testenv-build image consumer-image
	@KEEP=$(KEEP) tools/demo.sh

## demo-down: uninstall what make demo KEEP=1 left and stop its environment
demo-down:
	@tools/demo.sh down
