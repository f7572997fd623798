#!/usr/bin/env bash
# The slow tests: hundreds of kill -9 / resume iterations of the binary,
# every bit of a log store flipped, wider crash-consistency loops.
#   scripts/soak.sh                 (HXO_CRASH_ITERATIONS=200 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
export HXO_SLOW_TESTS=1
export HXO_CRASH_ITERATIONS=${HXO_CRASH_ITERATIONS:-200}
cargo test --release --locked -- --test-threads 1
