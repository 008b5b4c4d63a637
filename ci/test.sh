#!/usr/bin/env bash
# The project's test command: formatting, lints, then every test.
# Integration tests start real processes and FUSE mounts (root, /dev/fuse).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
cargo fmt --all --check
cargo clippy --workspace --all-targets --all-features -- -D warnings
cargo test --workspace --all-features
