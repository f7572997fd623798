#!/usr/bin/env bash
# Everything a change must pass before it is pushed: formatting, clippy with
# warnings denied, the tests, and the docs.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --release --locked
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked
