#!/usr/bin/env bash
# Installs what building and testing torchfs needs on Debian 12 (as root):
# the Cap'n Proto compiler, the tools ISA-L's build uses, FUSE 3 tools,
# and rustfmt and clippy for the Rust toolchain already installed.
set -euo pipefail

packages=(capnproto nasm autoconf automake libtool pkg-config fuse3)
# RDMA verbs (sideway): its rdma-mummy-sys runs bindgen (libclang) and cmake;
# rdma-core is loaded at run time and is only needed where a device is.
packages+=(cmake libclang-dev)
# POSIX tests: setfacl/getfacl and setfattr (acl, attr); setpriv is in util-linux.
packages+=(acl attr)
# The Python package's tests: Debian's CPU build of torch (~150 MB, in
# Debian's own /usr/bin/python3) instead of PyPI's ~3 GB of CUDA wheels.
packages+=(python3 python3-venv python3-pip python3-numpy python3-torch)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: need root to apt-get install ${missing[*]}" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: cargo not found: install a Rust toolchain (rustup, Rust >= 1.85) first" >&2
  exit 1
fi
if command -v rustup >/dev/null 2>&1; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi
echo "install-deps: ok ($(cargo --version))"
