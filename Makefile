# kiln — the two commands that matter: `make demo` and `make test`.
# Both install what they need on Debian 12 (as root) first.

GO       ?= go
BIN      := bin
VERSION  ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X github.com/kilnvm/kiln/internal/daemon.Version=$(VERSION)
E2E_TIMEOUT ?= 60m

.PHONY: all deps build test unit e2e demo bench docs lint install clean

all: build

## deps: install the Debian packages and Go modules kiln and its tests use
deps:
	@scripts/deps.sh
	@$(GO) mod download

## build: bin/kiln and the static guest agent bin/kiln-agent
build:
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/kiln-agent ./cmd/kiln-agent
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/kiln ./cmd/kiln

## test: every test — unit tests with the race detector, then the
## end-to-end suite that boots real VMs under QEMU
test: deps build lint unit e2e

unit:
	$(GO) test -race -timeout 20m $$($(GO) list ./... | grep -v /test/)

# -count=1: the e2e tests build and run the binaries themselves, so Go's
# test cache cannot see that a change to the daemon or agent affects them.
e2e: build
	$(GO) test -count=1 -timeout $(E2E_TIMEOUT) -v ./test/e2e/

## demo: on a fresh machine, get a kernel and the default Debian image and
## print the guest's `uname -a`
demo: deps build
	@scripts/demo.sh

## bench: ratios against bare baselines, written to docs/performance.md
bench: deps build
	KILN_BENCH_OUT=$(CURDIR)/docs/performance.md $(GO) test -count=1 -timeout 60m -v -run '^TestBenchmark' ./test/e2e/

## docs: regenerate docs/cli.md and docs/api.md from the code (a unit test
## fails when they are stale)
docs:
	$(GO) run ./internal/docgen/gendocs docs

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

install: build
	install -D -m 0755 $(BIN)/kiln /usr/local/bin/kiln
	install -D -m 0755 $(BIN)/kiln-agent /usr/local/lib/kiln/kiln-agent

clean:
	rm -rf $(BIN)
