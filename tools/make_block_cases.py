#!/usr/bin/env python3
"""Random GGML blocks of every type the engine dequantizes itself, with gguf-py's values for
them: tests/fixtures/ggml_blocks.safetensors holds `<TYPE>.bytes` (U8) and `<TYPE>.values` (F32)
per type. The f16 scales are drawn finite (a NaN scale would make every comparison fail
alike), every other byte uniformly, so every code, sign and packed scale occurs.

    pip install -r tools/requirements.txt
    python tools/make_block_cases.py
"""

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize
from safetensors.numpy import save_file

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "ggml_blocks.safetensors"
BLOCKS = 64

# Byte offsets of each type's f16 scales within a block.
F16_FIELDS = {
    T.Q4_1: [0, 2],
    T.Q5_0: [0],
    T.Q5_1: [0, 2],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
}


def main():
    rng = np.random.default_rng(0)
    tensors = {}
    for qtype, fields in F16_FIELDS.items():
        _, size = GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, size=(BLOCKS, size), dtype=np.uint8)
        for at in fields:
            scale = rng.uniform(-2.0, 2.0, size=BLOCKS).astype(np.float16)
            raw[:, at:at + 2] = scale.view(np.uint8).reshape(BLOCKS, 2)
        values = dequantize(raw.reshape(-1), qtype).astype(np.float32).reshape(-1)
        tensors[f"{qtype.name}.bytes"] = raw.reshape(-1)
        tensors[f"{qtype.name}.values"] = values
    save_file(tensors, str(OUT))
    print(f"{len(F16_FIELDS)} types, {BLOCKS} blocks each, in {OUT}")


if __name__ == "__main__":
    main()
