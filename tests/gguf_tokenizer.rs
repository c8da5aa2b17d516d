//! Tokenizers read from GGUF files: llama.cpp's own tokenizer test suite (its
//! `ggml-vocab-*.gguf` vocabularies with `.inp` strings and `.out` ids, committed for the
//! pre-tokenizers read: tests/fixtures/vocab; `MOE_VOCAB_DIR` may name llama.cpp's models/
//! folder for the rest, among them command-r and gemma-4, too large to commit), and the
//! bundled model's GGUF against its tokenizer.json and chat template.

mod common;

use std::path::{Path, PathBuf};

use moe_runtime::chat_template::{Message, RenderOptions};
use moe_runtime::tokenizer::Tokenizer;

/// (text, expected ids) of a vocabulary's `.inp` / `.out` pair.
fn cases(vocab: &Path) -> Vec<(String, Vec<u32>)> {
    let read = |ext: &str| std::fs::read_to_string(format!("{}.{ext}", vocab.display())).unwrap();
    let inputs = read("inp");
    let outputs = read("out");
    inputs
        .split("\n__ggml_vocab_test__\n")
        .zip(outputs.split('\n'))
        .map(|(text, ids)| {
            let ids = ids.split_whitespace().map(|i| i.parse().unwrap()).collect();
            (text.to_string(), ids)
        })
        .collect()
}

fn vocabularies(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .filter(|p| Path::new(&format!("{}.out", p.display())).exists())
        .collect();
    found.sort();
    found
}

#[test]
fn llama_cpp_vocabulary_tests_pass() {
    let mut dirs = vec![common::fixtures_dir().join("vocab")];
    dirs.extend(std::env::var_os("MOE_VOCAB_DIR").map(PathBuf::from));
    let mut checked = 0;
    for dir in dirs {
        for vocab in vocabularies(&dir) {
            let tok = match Tokenizer::load(&vocab) {
                Ok(tok) => tok,
                // Beyond the committed ones, a vocabulary of a kind not read yet is skipped.
                Err(e) if !dir.ends_with("vocab") => {
                    println!("skipped {}: {e}", vocab.display());
                    continue;
                }
                Err(e) => panic!("{e}"),
            };
            for (text, want) in cases(&vocab) {
                // As the suite runs: no special tokens added, special text not parsed.
                let got = tok.encode_literally(&text, false).unwrap();
                assert_eq!(got, want, "{}: {text:?}", vocab.display());
                checked += 1;
            }
        }
    }
    assert!(checked >= 11 * 47, "only {checked} strings");
}

fn bundled_gguf() -> PathBuf {
    common::fixtures_dir().join("gguf/tiny-shakespeare-moe-q4_0.gguf")
}

#[test]
fn the_bundled_models_gguf_tokenizes_as_its_tokenizer_json() {
    let gguf = Tokenizer::load(&bundled_gguf()).unwrap();
    let json = Tokenizer::load(Path::new(moe_runtime::BUNDLED_MODEL)).unwrap();
    let file = common::fixtures_dir().join("gguf/tokenizer_cases.json");
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(gguf.encode_with(text, false).unwrap(), want, "{text:?}");
        assert_eq!(json.encode_with(text, false).unwrap(), want, "{text:?}");
        assert_eq!(gguf.decode(&want).unwrap(), json.decode(&want).unwrap());
    }
    assert_eq!(gguf.eos_ids(), json.eos_ids());
    // The chat template travels in the file.
    let messages = [
        Message::system("Speak in verse."),
        Message::user("Who is there?"),
    ];
    let opts = RenderOptions {
        add_generation_prompt: true,
        ..RenderOptions::default()
    };
    assert_eq!(
        gguf.apply_chat_template(&messages, &opts).unwrap(),
        json.apply_chat_template(&messages, &opts).unwrap()
    );
}
