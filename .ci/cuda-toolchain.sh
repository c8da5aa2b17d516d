#!/usr/bin/env bash
# Sets up what building the `cuda` feature needs on a machine without a CUDA toolkit or GPU
# (../shared/reference/cuda-build.md): nvcc and the CUDA 13.0 libraries from PyPI wheels in a
# virtual environment, link names for them, and a stub libcuda.so for linking only (never put
# it on a GPU machine's library path). Prints the environment to export.
#
#   eval "$(.ci/cuda-toolchain.sh [VENV])"      # VENV defaults to ~/.cache/moe-runtime/cuda
#   cargo build --release --features cuda
set -euo pipefail
venv=${1:-$HOME/.cache/moe-runtime/cuda}
root=$(cd "$(dirname "$0")/.." && pwd)

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2
fi
# 13.0 to match the 580 drivers of the GPU machines (newer PTX is refused by them); nvvm is
# pinned too, since the nvcc wheel pulls it unpinned.
"$venv/bin/pip" install -q \
  nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 \
  nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88 >&2
tk=$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')

# The wheels ship libfoo.so.N; the linker looks for libfoo.so (cudarc searches lib/stubs).
mkdir -p "$tk/lib/stubs"
for lib in cudart.so.13 cublas.so.13 cublasLt.so.13 curand.so.10 nvrtc.so.13; do
  ln -sf "../lib$lib" "$tk/lib/stubs/lib${lib%%.so.*}.so"
done
# libcuda belongs to the driver, which no wheel ships: every entry point cudarc can name,
# each returning CUDA_ERROR_STUB_LIBRARY (34).
if [ ! -e "$tk/lib/stubs/libcuda.so" ]; then
  # cudarc's sources name every driver entry point. `cargo metadata` fetches them when the
  # registry has never held cudarc (a fresh machine: nothing but the cuda feature needs it).
  cudarc=$(cargo metadata --format-version 1 --features cuda --manifest-path "$root/Cargo.toml" \
    | python3 -c 'import json, os, sys
for p in json.load(sys.stdin)["packages"]:
    if p["name"] == "cudarc": print(os.path.dirname(p["manifest_path"]))')
  if [ ! -f "$cudarc/src/driver/sys/mod.rs" ]; then
    echo "cuda-toolchain.sh: cudarc's sources not found through cargo metadata" >&2
    exit 1
  fi
  grep -oE '^pub unsafe fn cu[A-Za-z0-9_]+' "$cudarc/src/driver/sys/mod.rs" | sort -u \
    | awk '{print "int "$4"(void){return 34;}"}' > "$tk/lib/stubs/libcuda_stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$tk/lib/stubs/libcuda.so" "$tk/lib/stubs/libcuda_stub.c"
fi

echo "export PATH=\"$tk/bin:\$PATH\" CUDA_HOME=\"$tk\" CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90} CUDAFORGE_THREADS=\${CUDAFORGE_THREADS:-2}"
