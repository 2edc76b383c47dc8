# tapstack — two commands: `make demo` and `make test`.
# Both install missing Debian packages when run as root.

CARGO ?= cargo
export CARGO_TARGET_DIR ?= $(CURDIR)/target

.PHONY: demo test bench fuzz deps lint

deps:
	@scripts/ensure-deps.sh test

demo:
	@scripts/ensure-deps.sh demo
	@scripts/demo.sh

test: deps
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --doc
	@if command -v cargo-nextest >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		$(CARGO) test --workspace --no-fail-fast; \
	fi

bench: deps
	$(CARGO) bench -p tapstack-protocol --bench tap
	$(CARGO) bench -p tapstack-host --bench ingest
	$(CARGO) bench -p tapstack-emulator --bench transport
	$(CARGO) build --release --bins
	$(CARGO) bench -p tapstack-reader --bench drivers
	$(CARGO) bench -p tapstack-terminal --bench queue

fuzz:
	@scripts/ensure-deps.sh fuzz
	@scripts/fuzz.sh

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p tapstack-terminal --no-default-features -- -D warnings
