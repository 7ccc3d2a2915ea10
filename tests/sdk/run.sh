#!/usr/bin/env bash
# The real analytics SDKs (installed from npm at the exact versions of
# tests/sdk/package-lock.json) against `sessionizer serve`: each test file
# starts its own server on a fresh data directory and project, points the SDK
# at it with only the URL and the write key changed, and checks through the
# read API what was stored. See docs/sdk-compatibility.md.
# test/dashboard.test.mjs drives the web dashboard (/dashboard/) in headless
# Chromium against a server filled with generated events, checks every figure
# it shows against a naive reference, and saves a screenshot of each page to
# tests/sdk/artifacts/dashboard-<page>.png. See docs/dashboard.md.
# test/sessionizer-sdk.test.mjs drives sessionizer's own browser SDK (/sdk.js,
# /sdk.mjs) in Chromium with the page clock controlled. See docs/browser-sdk.md.
#
#   bash tests/sdk/run.sh              # builds the release binary first
#   SESSIONIZER_BIN=path bash tests/sdk/run.sh   # uses that binary instead
#
# Needs Node.js 20.20+ and npm, and for the browser test Debian's Chromium
# (/usr/bin/chromium, or $CHROMIUM_PATH). Without them the run (or the
# browser and dashboard tests) is skipped with a message, except in CI
# (CI=true), where Chromium is installed with apt-get and any missing tool
# fails the run.
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$(pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sessionizer/target}"

missing() {
  if [[ "${CI:-}" == "true" ]]; then
    echo "tests/sdk: $1 (required in CI)" >&2
    exit 1
  fi
  echo "tests/sdk: SKIPPED: $1" >&2
  exit 0
}

command -v node >/dev/null 2>&1 || missing "node is not installed (Node.js 20.20 or newer; e.g. apt-get install nodejs npm)"
command -v npm >/dev/null 2>&1 || missing "npm is not installed (e.g. apt-get install npm)"
if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 20) ? 0 : 1)'; then
  missing "node $(node --version) is too old: posthog-node needs 20.20 or newer"
fi

chromium="${CHROMIUM_PATH:-/usr/bin/chromium}"
if [[ ! -x "$chromium" ]]; then
  if [[ "${CI:-}" == "true" ]]; then
    echo "tests/sdk: installing chromium (apt-get)" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    [[ -x "$chromium" ]] || { echo "tests/sdk: no Chromium at $chromium after apt-get install (required in CI)" >&2; exit 1; }
  else
    echo "tests/sdk: no Chromium at $chromium: the browser test is SKIPPED (apt-get install chromium, or set CHROMIUM_PATH)" >&2
  fi
fi

if [[ -z "${SESSIONIZER_BIN:-}" ]]; then
  cargo build --release --locked --quiet -p sessionizer
  SESSIONIZER_BIN="$CARGO_TARGET_DIR/release/sessionizer"
fi
SESSIONIZER_BIN="$(cd "$(dirname "$SESSIONIZER_BIN")" && pwd)/$(basename "$SESSIONIZER_BIN")"
export SESSIONIZER_BIN

# npm ci only when node_modules was not installed from this very lock file.
cd "$root/tests/sdk"
lock_sum="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [[ "$(cat node_modules/.installed-lock.sha256 2>/dev/null)" != "$lock_sum" ]]; then
  echo "tests/sdk: npm ci" >&2
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
  echo "$lock_sum" > node_modules/.installed-lock.sha256
fi

# One process per test file (the SDK clients keep global state), run side by side.
exec node --test --test-reporter=spec --test-concurrency=3 test/*.test.mjs
