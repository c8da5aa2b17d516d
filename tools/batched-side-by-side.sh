#!/usr/bin/env bash
# Batched decode against llama.cpp, as ../shared/bench/side-by-side.sh does for batch 1: ours
# (`moe bench --batch 8,32`) and llama-batched-bench (-npl 8,32) on the same q3-mini GGUFs
# (../shared/bench/anchors.sh), prompt 128 per sequence, 32 steps, interleaved rounds, medians
# of the whole batch's decode tokens/s. Run from the project root after `cargo build --release`.
# Usage: ROUNDS=2 FORMATS="q4_k_m q4_0 q8_0" bash tools/batched-side-by-side.sh
A=${ANCHORS:-$HOME/moe-anchors}; M=${MOE:-target/release/moe}; R=${ROUNDS:-2}; T=${THREADS:-2}
out=$(mktemp -d)
for r in $(seq $R); do for f in ${FORMATS:-q4_k_m q4_0 q8_0}; do
  "$M" bench --threads "$T" --model $A/q3mini-$f.gguf --prompt-len 128 --gen-len 32 --repeats 1 --idle-seconds 0 --batch 8,32 --json 2>/dev/null | grep '^{' >> $out/ours-$f
  (cd $A && LD_LIBRARY_PATH=llama/build/bin llama/build/bin/llama-batched-bench -m q3mini-$f.gguf -c 8192 -b 2048 -ub 512 -npp 128 -ntg 32 -npl 8,32 -t "$T" 2>/dev/null | grep -E "^\|\s+128") >> $out/llama-$f
done; done
python3 - $out ${FORMATS:-q4_k_m q4_0 q8_0} <<'PY'
import json, sys, statistics as st
out, fmts = sys.argv[1], sys.argv[2:]
for f in fmts:
    ours = {}
    for l in open(f"{out}/ours-{f}"):
        d = json.loads(l); ours.setdefault(d.get("batch", 1), []).append(d["decode_tokens_per_s"])
    ll = {}
    for l in open(f"{out}/llama-{f}"):
        c = [x.strip() for x in l.strip().strip("|").split("|")]
        ll.setdefault(int(c[2]), []).append(float(c[7]))
    for b in (8, 32):
        o, l = st.median(ours.get(b, [float("nan")])), st.median(ll.get(b, [float("nan")]))
        print(f"{f:7} batch {b:2}: ours {o:7.1f}  llama {l:7.1f}  ratio {o/l:5.2f}  (ours {ours.get(b)}, llama {ll.get(b)})")
PY
rm -rf $out
