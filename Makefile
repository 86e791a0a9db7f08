# Duet. The two commands a newcomer needs: `make run` and `make test`.
SHELL := /usr/bin/env bash
GO    ?= go
BIN   := $(CURDIR)/bin
TOOLS := $(CURDIR)/.bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.Version=$(VERSION)

# Pinned tool versions (protoc-gen-go must match google.golang.org/protobuf in go.mod).
BUF_VERSION           := v1.75.0
PROTOC_GEN_GO_VERSION := v1.36.12
STATICCHECK_VERSION   := v0.8.2

# Tests reach PostgreSQL over its Unix socket, where scripts/services.sh
# makes sure the current user has a role (a fresh install refuses TCP
# without a password).
export DUET_TEST_DATABASE_URL ?= postgres:///postgres?host=/var/run/postgresql
# Test timeout for the whole suite; the machines are shared and slow.
TEST_TIMEOUT ?= 15m

.PHONY: all build run test test-short services lint bench fuzz proto proto-check tools clean web-vendor

all: build

build: ## build bin/duet and bin/duet-sim (the fleet simulator)
	@mkdir -p $(BIN)
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/duet ./cmd/duet
	$(GO) build -trimpath -o $(BIN)/duet-sim ./cmd/duet-sim

run: build ## run Duet with embedded NATS and brokers (PostgreSQL is found or set up)
	scripts/run.sh

services: ## make sure PostgreSQL, NATS, Mosquitto and RabbitMQ (+STOMP) are running, and Chromium installed
	scripts/services.sh postgres nats mosquitto rabbitmq chromium

# -json through scripts/testprogress: a line per finished test, so a long
# package (e2e takes minutes) shows it is alive; a failure prints its output.
test: services ## every test, with the race detector, against the real services
	set -o pipefail; $(GO) test -race -timeout $(TEST_TIMEOUT) -json ./... | $(GO) run ./scripts/testprogress

test-short: services
	set -o pipefail; $(GO) test -timeout $(TEST_TIMEOUT) -json ./... | $(GO) run ./scripts/testprogress

lint: $(TOOLS)/staticcheck ## go vet and staticcheck
	$(GO) vet ./...
	$(TOOLS)/staticcheck ./...

bench: services ## benchmarks (figures go in notes; they never fail a build)
	$(GO) test -run '^$$' -bench . -benchmem -timeout 30m ./...

FUZZTIME ?= 30s
fuzz: ## run each fuzz target for FUZZTIME
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz' || true); do \
	    echo "fuzz $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; \
	done

web-vendor: ## refresh the console's vendored browser packages (needs npm; building does not)
	scripts/web-vendor.sh

tools: $(TOOLS)/buf $(TOOLS)/protoc-gen-go $(TOOLS)/staticcheck

$(TOOLS)/buf:
	GOBIN=$(TOOLS) $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
$(TOOLS)/protoc-gen-go:
	GOBIN=$(TOOLS) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
$(TOOLS)/staticcheck:
	GOBIN=$(TOOLS) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

proto: $(TOOLS)/buf $(TOOLS)/protoc-gen-go ## regenerate the checked-in Go code from proto/
	PATH="$(TOOLS):$$PATH" $(TOOLS)/buf lint
	PATH="$(TOOLS):$$PATH" $(TOOLS)/buf generate

proto-check: proto ## fail when the generated code is not what `make proto` produces
	@if ! git diff --quiet -- proto || [ -n "$$(git ls-files --others --exclude-standard proto)" ]; then \
	  echo "proto: generated code is out of date; run 'make proto' and commit:"; \
	  git status --short proto; git diff --stat -- proto; exit 1; \
	fi

clean:
	rm -rf $(BIN) .data
