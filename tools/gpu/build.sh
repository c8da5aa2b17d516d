#!/usr/bin/env bash
# Builds, on the GPU-less dev machine, everything tools/gpu/run.sh runs on the GPU machine (which
# has no cargo registry): the `cuda` feature's test binaries, the `moe` binary and the GPU
# layer bench, stripped and xz-compressed into .gpu/ (git-ignored; about 35 MB), to be named in
# the device tool's `carry`:
#
#   tools/gpu/build.sh            # then: run(command="bash tools/gpu/run.sh", carry=[".gpu"])
set -euo pipefail
cd "$(dirname "$0")/../.."
eval "$(.ci/cuda-toolchain.sh "${CUDA_VENV:-$HOME/.cache/moe-runtime/cuda}")"
grep -qxF '/.gpu/' .git/info/exclude || echo '/.gpu/' >>.git/info/exclude
rm -rf .gpu && mkdir -p .gpu

# The executables cargo reports, as `name path` lines.
executables() {
  python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["target"]["name"], m["executable"])'
}
{
  cargo test --release --features cuda --lib --test cuda --no-run --message-format=json
  cargo build --release --features cuda --bin moe --message-format=json
  cargo bench --features cuda --bench gpu_moe_layer --no-run --message-format=json
} | executables | while read -r name path; do
  case $name in moe_runtime) name=lib-tests ;; cuda) name=cuda-tests ;; esac
  strip -o ".gpu/$name" "$path"
  xz -T2 -6 -f ".gpu/$name"
done
ls -la .gpu
