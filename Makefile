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
	set -o pipefail; cargo test --workspace 2>&1 | tee target/test.log
	@awk '/^test result:/ { p += $$4; f += $$6 } END { printf "tests: %d passed, %d failed\n", p, f }' target/test.log

bench:
	bench/run.sh
