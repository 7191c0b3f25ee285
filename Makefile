# The two commands (as root): `make daemon` builds ax and starts its daemon with the
# manual's defaults; `make test` builds everything and runs every check and test.

SHELL := bash
.PHONY: daemon test build bench

build:
	cargo build --release -p ax

daemon: build
	./target/release/ax daemon

test:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	mkdir -p target
	@# Every test binary runs even when one fails, so the count covers them all; the
	@# status is still cargo's.
	set -o pipefail; cargo test --workspace --no-fail-fast 2>&1 | tee target/test.log; status=$$?; \
	awk '/^test result:/ { p += $$4; f += $$6 } END { printf "tests: %d passed, %d failed\n", p, f }' target/test.log; \
	exit $$status

bench:
	bench/run.sh
