//! Greedy decoding through the public library API: load a checkpoint, prefill a prompt of
//! token ids, then decode one token at a time over the caller-owned cache.
//!
//!     cargo run --release --example greedy -- tests/fixtures/mixtral-a 5,17,42

use std::io::Write;
use std::time::Instant;

use moe_runtime::{generate, LoadOptions, Model};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .unwrap_or_else(|| "tests/fixtures/qwen3_moe-a".into());
    let prompt: Vec<u32> = args
        .next()
        .unwrap_or_else(|| "1,2,3".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;

    let model = Model::load(dir.as_ref(), &LoadOptions::default())?;
    let cfg = model.config();
    // Through a locked stdout with `writeln!`: a closed pipe is an error, not a panic.
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "{dir}: {} with {} experts, top-{}",
        cfg.model_type, cfg.moe.num_experts, cfg.moe.router.top_k
    )?;

    let mut cache = model.new_cache();
    let start = Instant::now();
    let mut next = generate::argmax(&model.forward_last(&prompt, &mut cache)?)?;
    let mut out = vec![next];
    for _ in 1..16 {
        next = generate::argmax(&model.forward_last(&[next], &mut cache)?)?;
        out.push(next);
    }
    writeln!(stdout, "{prompt:?} -> {out:?}")?;
    writeln!(
        stdout,
        "{} tokens in {:.1} ms",
        out.len(),
        start.elapsed().as_secs_f64() * 1e3
    )?;
    Ok(())
}
