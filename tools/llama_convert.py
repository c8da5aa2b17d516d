"""llama.cpp's convert_hf_to_gguf.py run as is, for the scripts in tools/ that make GGUF files
(make_gguf_fixtures.py, make_bench_checkpoint.py). One patch, applied in memory, no llama.cpp
file edited: the converter refuses a BPE pre-tokenizer whose hash it does not know, and the
checkpoints made here carry small byte-level BPE tokenizers; for those an unknown hash is taken
as "gpt-2", after checking that the tokenizer really is a GPT-2 style byte-level BPE.
"""

import json
import subprocess
import sys

# argv: the llama.cpp folder, then the converter's arguments.
CONVERT = """
import runpy, sys
llama = sys.argv[1]
sys.path[0:0] = [llama, llama + "/gguf-py"]
from conversion import base
original = base.TextModel.get_vocab_base_pre
def get_vocab_base_pre(self, tokenizer):
    try:
        return original(self, tokenizer)
    except NotImplementedError:
        base.logger.warning("llama_convert: unknown pre-tokenizer hash taken as gpt-2")
        return "gpt-2"
base.TextModel.get_vocab_base_pre = get_vocab_base_pre
sys.argv = [llama + "/convert_hf_to_gguf.py"] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def check_gpt2_bpe(tok_dir):
    """The gpt-2 fallback is only right for a byte-level BPE that splits with GPT-2's regex."""
    tok = json.loads((tok_dir / "tokenizer.json").read_text())
    pre = tok["pre_tokenizer"]
    assert tok["model"]["type"] == "BPE" and pre["type"] == "ByteLevel" and pre["use_regex"] \
        and tok["normalizer"] is None, \
        f"not a GPT-2 style byte-level BPE ({pre}): the gpt-2 fallback would be wrong"


def convert(llama, model_dir, outfile, outtype, extra=()):
    """Converts the checkpoint in `model_dir` to `outfile`; returns the converter's warnings."""
    check_gpt2_bpe(model_dir)
    cmd = [sys.executable, "-c", CONVERT, str(llama), str(model_dir), "--outfile", str(outfile),
           "--outtype", outtype, *extra]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.stderr.write(r.stdout + r.stderr)
        raise SystemExit(f"convert_hf_to_gguf.py failed on {model_dir}")
    return [l for l in (r.stdout + r.stderr).splitlines()
            if "WARNING" in l or "falling back" in l.lower()]
