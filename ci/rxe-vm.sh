#!/usr/bin/env bash
# Runs a command inside a small VM whose kernel has soft-RoCE, for RDMA
# verbs tests on hosts whose own kernel has no RDMA (as root, Debian 12):
#
#   ci/rxe-vm.sh CMD [ARGS...]
#
# The VM boots Debian's own kernel (virtme-ng, plain emulation) over this
# host's filesystem (read-only, with writable overlays), so binaries built
# here run inside unchanged. Inside, before CMD:
#   - rxe0 (soft-RoCE) on dummy0, 192.0.2.1/24; TORCHFS_VERBS_IP=192.0.2.1;
#   - TORCHFS_VERBS_REQUIRED=1: verbs tests fail rather than skip;
#   - fuse and loop loaded; TMPDIR on an ext4 scratch disk (O_DIRECT works
#     there, not on the overlays), unlimited locked memory.
# Prints CMD's output and exits with its status.
#
# On a host with a real InfiniBand or RoCE NIC none of this is needed: run
# the same commands there with TORCHFS_VERBS_IP set to the NIC's address.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -eq 0 ]; then
  echo "usage: ci/rxe-vm.sh CMD [ARGS...]" >&2
  exit 2
fi

VENV=${TORCHFS_VNG_VENV:-/opt/torchfs-vng}
MEMORY=${TORCHFS_VM_MEMORY:-3G}
SCRATCH_MB=${TORCHFS_VM_SCRATCH_MB:-1024}

packages=(qemu-system-x86 linux-image-amd64 rdma-core ibverbs-providers ibverbs-utils
  rdmacm-utils kmod iproute2 busybox-static e2fsprogs python3-venv)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "rxe-vm: need root to apt-get install ${missing[*]}" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ ! -x "$VENV/bin/vng" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q virtme-ng
fi
kernel=$(ls /boot/vmlinuz-*-amd64 2>/dev/null | sort -V | tail -1)
if [ -z "$kernel" ]; then
  echo "rxe-vm: no /boot/vmlinuz-*-amd64: apt-get install linux-image-amd64" >&2
  exit 1
fi

work=$(mktemp -d /tmp/torchfs-rxe.XXXXXX)
trap 'rm -rf "$work"' EXIT
printf '%q ' "$@" > "$work/cmd"
cat > "$work/inner.sh" <<INNER
#!/bin/bash
set -e
modprobe rdma_rxe
ip link add dummy0 type dummy
ip addr add 192.0.2.1/24 dev dummy0
ip link set dummy0 up
ip link set lo up
rdma link add rxe0 type rxe netdev dummy0
modprobe fuse
modprobe loop
truncate -s ${SCRATCH_MB}M /run/scratch.img
mkfs.ext4 -q -F /run/scratch.img
mkdir -p /run/scratch
mount -o loop /run/scratch.img /run/scratch
ulimit -l unlimited
export TMPDIR=/run/scratch TORCHFS_VERBS_IP=192.0.2.1 TORCHFS_VERBS_REQUIRED=1
export PATH="$PATH"
cd "$PWD"
set +e
bash -c "\$(cat $work/cmd)"
echo "rxe-vm: status \$?"
INNER
chmod +x "$work/inner.sh"

out="$work/out"
set +e
PATH="$VENV/bin:$PATH" timeout "${TORCHFS_VM_TIMEOUT_S:-1800}" \
  vng --run "$kernel" --disable-kvm --memory "$MEMORY" --cpus "$(nproc)" \
  --exec "$work/inner.sh" 2>&1 | tee "$out"
set -e
status=$(sed -n 's/^rxe-vm: status \([0-9]*\).*/\1/p' "$out" | tail -1)
if [ -z "$status" ]; then
  echo "rxe-vm: the VM did not report the command's status (boot failure or timeout)" >&2
  exit 1
fi
exit "$status"
