# Tandem — build, run, test, benchmark, fuzz.
GO       ?= go
BIN      := bin/tandem
FUZZTIME ?= 5s

.PHONY: build run test unit e2e lint fuzz fuzz-short bench deps clean powerloss failover-long

build:
	$(GO) build -o $(BIN) ./cmd/tandem

# Start a node in ./tandem-data with a 1 GiB volume "demo" (Ctrl-C stops it).
run: build
	./scripts/run.sh

# Everything CI runs: packages, lint, unit and end-to-end tests with the race
# detector, and a short pass of every fuzz target.
test: deps lint
	$(GO) test -race -count=1 -timeout 20m ./...
	$(MAKE) fuzz-short
	@echo "make test: all passed"

unit:
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v /tests)

e2e: deps
	$(GO) test -count=1 -v -timeout 20m ./tests/...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	 if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# Each fuzz target for FUZZTIME (make fuzz: 10 minutes each).
fuzz-short:
	./scripts/fuzz.sh $(FUZZTIME)

fuzz:
	FUZZ_KEEP=1 ./scripts/fuzz.sh $(if $(filter 5s,$(FUZZTIME)),10m,$(FUZZTIME))

# Tandem against tgtd and istgt on this machine, through QEMU's libiscsi
# driver, then a 2-copy volume against a 1-copy one on a 2-node cluster
# (BENCH_MIRROR=0 skips that), then failover pauses (BENCH_FAILOVER=0 skips
# them); BENCH_ONLY=QD1 runs only the matching workloads.
bench: build
	./scripts/deps.sh bench
	./scripts/bench.sh
	./scripts/bench-failover.sh

# The long power-loss run: 5000 random cuts (make test runs 250);
# TANDEM_POWERLOSS_SEED replays one run.
powerloss:
	TANDEM_POWERLOSS_CUTS=$${TANDEM_POWERLOSS_CUTS:-5000} $(GO) test -count=1 -v -timeout 2h -run 'TestPowerLoss$$' ./tests/

# The long failover run: 20 trials of each fault (kill, freeze; 10 each way
# for partitions) under stamped writers (make test runs 2).
failover-long: deps
	TANDEM_FAILOVER_TRIALS=$${TANDEM_FAILOVER_TRIALS:-20} $(GO) test -count=1 -v -timeout 3h -run 'TestFailover' ./tests/

deps:
	./scripts/deps.sh

clean:
	rm -rf bin
