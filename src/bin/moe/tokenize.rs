//! `moe tokenize`: the ids of a text with a model's tokenizer, or the text of ids.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::{ArgGroup, Args};
use moe_runtime::tokenizer::Tokenizer;
use serde_json::json;

use crate::common::{read_input, ModelArg};
use crate::{output, TokenIds};

#[derive(Args)]
#[command(group(ArgGroup::new("input").required(true).args(["text", "text_file", "decode"])))]
pub struct TokenizeArgs {
    #[command(flatten)]
    model: ModelArg,
    /// The text to encode.
    #[arg(long)]
    text: Option<String>,
    /// A UTF-8 file whose whole content is the text to encode.
    #[arg(long)]
    text_file: Option<PathBuf>,
    /// Token ids to decode instead (1,2,3), special tokens written out.
    #[arg(long, value_parser = crate::parse_tokens)]
    decode: Option<TokenIds>,
    /// Add what the tokenizer adds to a whole input (a bos token for Llama-style ones).
    #[arg(long, conflicts_with = "decode")]
    add_special: bool,
    /// Read special-token text in the input (`<|im_start|>`) as that token; by default it is
    /// plain text, as a user's message should be.
    #[arg(long, conflicts_with = "decode")]
    parse_special: bool,
    /// Print {"tokens": [...]} (or {"text": ...} with --decode) as the last line of stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &TokenizeArgs) -> Result<()> {
    let dir = args.model.dir()?;
    let tokenizer = Tokenizer::load(&dir)?;
    let mut out = output::stdout();
    if let Some(ids) = &args.decode {
        let text = tokenizer.decode(&ids.0)?;
        if args.json {
            writeln!(out, "{}", json!({ "text": text }))?;
        } else {
            writeln!(out, "{text}")?;
        }
        return Ok(());
    }
    let text = match (&args.text, &args.text_file) {
        (Some(text), _) => text.clone(),
        (None, Some(path)) => read_input("--text-file", path)?,
        (None, None) => unreachable!("clap requires one input"),
    };
    let ids = if args.parse_special {
        tokenizer.encode_with(&text, args.add_special)?
    } else {
        tokenizer.encode_literally(&text, args.add_special)?
    };
    if args.json {
        writeln!(out, "{}", json!({ "tokens": ids }))?;
    } else {
        for id in ids {
            let piece = tokenizer.id_to_token(id).unwrap_or_default();
            writeln!(out, "{id:>7} {piece:?}")?;
        }
    }
    Ok(())
}
