#!/usr/bin/env bash
# Passes the tests: formatting, lints, then every test of the workspace in the release
# profile (the one profile of the project).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
cargo test --release --workspace
