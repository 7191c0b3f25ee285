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
	@# The end-to-end suites (crates/ax/tests) run once per driver: under the user
	@# driver with everything else, then again under the kernel driver where its
	@# programs install (the probe says); the count covers both passes. What failing
	@# tests printed is repeated last (under the name of its pass), where a shortened
	@# log still shows it.
	set -o pipefail; echo "== every test, end-to-end suites under the user driver" | tee target/test.log; \
	AX_TEST_DRIVER=user cargo test --workspace --no-fail-fast 2>&1 | tee -a target/test.log; status=$$?; \
	if cargo test -q -p ax --test kernel -- --ignored --exact the_kernel_driver_installs_here >/dev/null 2>&1; then \
		echo "== the end-to-end suites under the kernel driver" | tee -a target/test.log; \
		AX_TEST_DRIVER=kernel cargo test -p ax --tests --no-fail-fast 2>&1 | tee -a target/test.log; \
		kernel=$$?; [ $$status -ne 0 ] || status=$$kernel; \
	else \
		echo "the kernel driver cannot be installed here: the end-to-end suites ran under the user driver only"; \
	fi; \
	awk '/^== / { print } /^---- .* stdout ----$$/ { on = 1; n = 0 } /^failures:$$/ { on = 0 } on && n++ < 40' target/test.log; \
	awk '/^test result:/ { p += $$4; f += $$6 } END { printf "tests: %d passed, %d failed\n", p, f }' target/test.log; \
	exit $$status

bench:
	bench/run.sh
