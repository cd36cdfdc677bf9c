#!/usr/bin/env bash
# Build target/debian/shipper_*.deb: the binary, both systemd units, the
# example config, the man page and bash/zsh/fish completions.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null 2>&1 || cargo install cargo-deb --locked
cargo build --release
mkdir -p target/assets
target/release/shipper man > target/assets/shipper.1
gzip -9nf target/assets/shipper.1
target/release/shipper completions bash > target/assets/shipper.bash
target/release/shipper completions zsh > target/assets/_shipper
target/release/shipper completions fish > target/assets/shipper.fish
cargo deb --no-build "$@"
