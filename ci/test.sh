#!/usr/bin/env bash
# The project's test command: formatting, lints, then every test.
# Integration tests start real processes and FUSE mounts (root, /dev/fuse).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
cargo fmt --all --check
cargo clippy --workspace --all-targets --all-features -- -D warnings
# Tests named device_verbs_* need an RDMA device: they run in the soft-RoCE VM below.
cargo test --workspace --all-features -- --skip device_verbs_

# RDMA verbs on soft-RoCE inside a VM (ci/rxe-vm.sh): there they must run.
if [ "$(id -u)" -eq 0 ]; then
  verbs_bins=$(cargo test -p torchfs-dataplane -p torchfs-cli --all-features --test transport \
    --test verbs --no-run \
    --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])')
  [ -n "$verbs_bins" ] || { echo "test: no verbs test binaries" >&2; exit 1; }
  cmd=""
  for b in $verbs_bins; do cmd+="$b device_verbs_ --test-threads 1 --nocapture && "; done
  ci/rxe-vm.sh bash -c "${cmd}true"
elif [ "${CI:-}" = "true" ]; then
  echo "test: CI=true but no root: the soft-RoCE VM cannot run the verbs tests" >&2
  exit 1
fi

# POSIX conformance of a real mount (pjdfstest, fsx 100,000 operations).
if [ "$(id -u)" -eq 0 ] && [ -e /dev/fuse ]; then
  cargo build -p torchfs-cli
  ci/posix.sh target/debug/torchfs
elif [ "${CI:-}" = "true" ]; then
  echo "test: CI=true but no root or /dev/fuse: the POSIX suites cannot run" >&2
  exit 1
fi

# The benchmark harness end to end at tiny sizes: every workload against
# torchfs, the local disk and the FUSE ceiling (checks that it runs, not how
# fast). With root and /dev/fuse every target must work (--strict).
perf_out=$(mktemp -d)
strict=()
if [ "$(id -u)" -eq 0 ] && [ -e /dev/fuse ]; then
  strict=(--strict)
fi
cargo run -p torchfs-perf -- --quick --out "$perf_out" --work-dir "$perf_out/work" "${strict[@]}"
rm -rf "$perf_out"

# The Python package: unit tests (torch ones run where Debian's torch is
# installed), then a pip install from the repository into a throwaway venv.
python_tests() {
  local py=/usr/bin/python3
  [ -x "$py" ] || py=python3
  "$py" -m unittest discover -s python/tests
  local venv
  venv="$(mktemp -d)"
  "$py" -m venv --system-site-packages "$venv"
  "$venv/bin/pip" install -q --no-build-isolation --no-deps --no-index ./python
  (cd "$venv" && "$venv/bin/python" -c 'import torchfs; torchfs.PlanSampler')
  rm -rf "$venv" python/build python/src/torchfs.egg-info
}
python_tests
