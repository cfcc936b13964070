#!/usr/bin/env bash
# Installs what plafond needs on a fresh Debian machine: libclang for the rocksdb crate's
# bindings, a C++ compiler for RocksDB itself, redis-tools for the demo and the peers,
# Python's prometheus_client for the metrics test, redis-py for the stream tests,
# Debian's chromium (headless) for the live page's test and nftables for the Jepsen test's
# partitions (examples/src/jepsen/partition.rs; its rules need root).
# Sourced by demo.sh and test.sh; safe to run again (installs only what is missing).
set -euo pipefail

missing=()
dpkg -s libclang-dev >/dev/null 2>&1 || missing+=(libclang-dev)
dpkg -s clang >/dev/null 2>&1 || missing+=(clang)
command -v g++ >/dev/null 2>&1 || missing+=(g++)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
dpkg -s nftables >/dev/null 2>&1 || missing+=(nftables)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}" >&2
    sudo_if_needed=""
    [ "$(id -u)" -eq 0 ] || sudo_if_needed="sudo"
    $sudo_if_needed apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_if_needed apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Large, so alone and without what it merely recommends: examples/tests/page.rs drives it
# headless (no display, no sound, no fonts beyond its own dependencies needed).
if ! command -v chromium >/dev/null 2>&1; then
    echo "setup: installing chromium" >&2
    sudo_if_needed=""
    [ "$(id -u)" -eq 0 ] || sudo_if_needed="sudo"
    $sudo_if_needed apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_if_needed apt-get install -y -qq --no-install-recommends \
        chromium >/dev/null
fi
# The Prometheus project's Python client: its strict OpenMetrics parser reads /metrics in
# examples/tests/metrics.rs.
if ! python3 -c "import prometheus_client" >/dev/null 2>&1; then
    echo "setup: installing prometheus_client (pip)" >&2
    python3 -m pip install -q prometheus_client >/dev/null 2>&1 \
        || python3 -m pip install -q --break-system-packages prometheus_client >/dev/null
fi
# redis-py, a real Redis client library: examples/tests/streams.rs drives its xread/xrange.
if ! python3 -c "import redis" >/dev/null 2>&1; then
    echo "setup: installing redis (pip)" >&2
    python3 -m pip install -q redis >/dev/null 2>&1 \
        || python3 -m pip install -q --break-system-packages redis >/dev/null
fi
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo is needed (https://rustup.rs)" >&2; exit 1; }

# One build directory, outside the clone, for tests, benches and examples alike: RocksDB's
# C++ takes many minutes on two cores and is compiled once. A cold one works too.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/plafond/target}"
mkdir -p "$CARGO_TARGET_DIR"
