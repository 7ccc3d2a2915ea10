#!/usr/bin/env bash
# The whole test suite (README.md's test command; .ci/run calls it too).
#
# 1. Cross-check: sessionize a generated data set with sessionizer and with
#    DuckDB SQL and require the same sessions (bench/sessionize_vs_duckdb.py,
#    small size; the full benchmark is documented in docs/benchmarks.md).
# 2. The real analytics SDKs (npm) against `sessionizer serve`
#    (tests/sdk/run.sh, docs/sdk-compatibility.md), on the binary built here.
# 3. cargo test: unit, scenario, model (proptest), golden and CLI tests.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sessionizer/target}"

if ! python3 -c 'import numpy, pyarrow, duckdb' 2>/dev/null; then
  echo "installing the cross-check's Python packages (bench/requirements.txt)" >&2
  python3 -m pip install --quiet -r bench/requirements.txt
fi

cargo build --locked -p sessionizer
data_dir="$(mktemp -d)"
trap 'rm -rf "$data_dir"' EXIT
python3 bench/sessionize_vs_duckdb.py --events 200000 --repeat 1 --cross-check \
  --binary "$CARGO_TARGET_DIR/debug/sessionizer" --data-dir "$data_dir"

SESSIONIZER_BIN="$CARGO_TARGET_DIR/debug/sessionizer" bash tests/sdk/run.sh

cargo test --workspace --locked
cargo test --manifest-path fuzz/Cargo.toml --locked
