# The two commands (as root): `make daemon` builds ax and starts its daemon with the
# manual's defaults; `make test` builds everything and runs every check and test.

.PHONY: daemon test build bench

build:
	cargo build --release -p ax

daemon: build
	./target/release/ax daemon

test:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo test --workspace

bench:
	bench/run.sh
