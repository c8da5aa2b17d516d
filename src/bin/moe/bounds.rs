//! The counts a flag may ask for, checked before anything is allocated or looped over, each
//! error naming the flag, the value and the bound. Threads, batches and memory are the
//! library's `Limits`; the context is the model's; what only the command line asks for
//! (repeats, rounds) is bounded here.

use anyhow::{bail, Result};
use moe_runtime::{Limits, Model};

/// Timed runs per setting: a median over more measures nothing new, and a slip of the finger
/// past it would run for days.
pub const MAX_REPEATS: usize = 1000;
/// Passes of `moe explore` over all its settings, each loading every model again.
pub const MAX_ROUNDS: usize = 100;

/// `n` of `flag` is at least 1: a count of 0 would do nothing and succeed.
pub fn positive(flag: &str, n: usize) -> Result<()> {
    if n == 0 {
        bail!("{flag} 0 asks for nothing to be done: give at least 1");
    }
    Ok(())
}

/// `n` of `flag` is in 1..=`max`; `why` says where the bound comes from.
pub fn at_most(flag: &str, n: usize, max: usize, why: &str) -> Result<()> {
    if n == 0 || n > max {
        bail!("{flag} {n} is out of range 1..={max} ({why})");
    }
    Ok(())
}

/// The new-token budget of one prompt of `prompt` tokens: `asked` (`--max-new-tokens`) when
/// the prompt and that many new tokens fit in the model's context, an error that says how many
/// would fit when they do not (as vLLM refuses a request whose prompt and `max_tokens` pass
/// `max_model_len`). Left out, the budget is `default`, and generation stops where the context
/// is full, saying so (as llama.cpp stops without `--context-shift`).
pub fn new_tokens(
    prompt: usize,
    asked: Option<usize>,
    default: usize,
    context: usize,
) -> Result<usize> {
    if prompt == 0 {
        bail!("the prompt is empty: give it some text (or token ids)");
    }
    if prompt >= context {
        bail!(
            "the prompt is {prompt} tokens and the model's context holds {context} \
             (max_position_embeddings): no room is left for a new token"
        );
    }
    let Some(n) = asked else {
        return Ok(default);
    };
    positive("--max-new-tokens", n)?;
    if prompt as u128 + n as u128 > context as u128 {
        bail!(
            "the prompt ({prompt} tokens) and --max-new-tokens {n} need {} positions, more than \
             the model's context of {context} (max_position_embeddings): ask for at most {}",
            prompt as u128 + n as u128,
            context - prompt
        );
    }
    Ok(n)
}

/// `moe bench`'s and `moe explore`'s prompt and generation lengths: each at least 1 and, once
/// the model is known, their sum within its context. The sum is returned.
pub fn bench_lengths(prompt_len: usize, gen_len: usize, context: Option<usize>) -> Result<usize> {
    positive("--prompt-len", prompt_len)?;
    positive("--gen-len", gen_len)?;
    let sum = prompt_len as u128 + gen_len as u128;
    match context {
        Some(context) if sum > context as u128 => bail!(
            "--prompt-len {prompt_len} + --gen-len {gen_len} = {sum} positions, more than the \
             model's context of {context} (max_position_embeddings)"
        ),
        // Within a context, or a sum of two usizes that a u64 context could not hold anyway.
        _ if sum > usize::MAX as u128 => {
            bail!("--prompt-len {prompt_len} + --gen-len {gen_len} is beyond any model's context")
        }
        _ => Ok(sum as usize),
    }
}

/// The caches of `batch` sequences of `positions` each fit in the memory available now,
/// checked before the first is allocated: keys and values (or latents) in the compute dtype.
/// On the CPU only: `Limits::check_memory` knows the host's memory, not a GPU's.
pub fn caches(model: &Model, batch: usize, positions: usize) -> Result<()> {
    if !model.device().is_cpu() {
        return Ok(());
    }
    let per_position = model.config().cached_numbers_per_position() as u128;
    let bytes =
        per_position * model.dtype().size_in_bytes() as u128 * batch as u128 * positions as u128;
    let what = match batch {
        1 => format!("a cache of {positions} positions"),
        _ => format!("the caches of {batch} sequences of {positions} positions"),
    };
    Limits::current().check_memory(&what, bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_within_the_context_pass_and_others_say_what_fits() {
        assert_eq!(new_tokens(10, None, 32, 1024).unwrap(), 32);
        assert_eq!(new_tokens(10, Some(1014), 32, 1024).unwrap(), 1014);
        let e = new_tokens(10, Some(usize::MAX), 32, 1024).unwrap_err();
        assert!(e.to_string().contains("ask for at most 1014"), "{e}");
        let e = new_tokens(10, Some(0), 32, 1024).unwrap_err();
        assert!(e.to_string().contains("--max-new-tokens 0"), "{e}");
        let e = new_tokens(0, Some(1), 32, 1024).unwrap_err();
        assert!(e.to_string().contains("prompt is empty"), "{e}");
        assert!(new_tokens(1024, None, 32, 1024).is_err());
    }

    #[test]
    fn lengths_near_the_top_of_usize_do_not_wrap() {
        let e = bench_lengths(usize::MAX, 2, Some(1024)).unwrap_err();
        assert!(
            e.to_string().contains("more than the model's context"),
            "{e}"
        );
        assert!(bench_lengths(usize::MAX, 2, None).is_err());
        assert_eq!(bench_lengths(100, 28, Some(128)).unwrap(), 128);
        assert!(bench_lengths(0, 2, None).is_err());
    }
}
