//! The bundled model's tokenizer: round trips, special tokens, and streaming detokenization
//! that never splits a character and adds up to the whole.

use std::path::PathBuf;

use moe_runtime::tokenizer::Tokenizer;

fn tokenizer() -> Tokenizer {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/tiny-shakespeare-moe");
    Tokenizer::load(&dir).unwrap()
}

#[test]
fn text_round_trips() {
    let tok = tokenizer();
    let text = "ROMEO:\nBut, soft! what light through yonder window breaks?\n";
    let ids = tok.encode(text).unwrap();
    assert!(
        ids.len() < text.len(),
        "BPE should merge characters: {ids:?}"
    );
    assert_eq!(tok.decode(&ids).unwrap(), text);
}

#[test]
fn special_tokens_in_text_become_their_ids() {
    let tok = tokenizer();
    let start = tok.token_to_id("<|im_start|>").unwrap();
    let end = tok.token_to_id("<|im_end|>").unwrap();
    let ids = tok.encode("<|im_start|>user\nHail!<|im_end|>").unwrap();
    assert_eq!((ids[0], *ids.last().unwrap()), (start, end));
    assert_eq!(tok.eos_ids(), &[end]);
}

#[test]
fn streaming_pieces_are_whole_characters_and_add_up() {
    let tok = tokenizer();
    // Characters the Shakespeare vocabulary never saw arrive as several byte-level tokens.
    let text = "Ünïcödé — 🎭 “quoth” ça, 漢字! ROMEO:";
    let ids = tok.encode(text).unwrap();
    let mut stream = tok.stream();
    let mut pieces = Vec::new();
    let mut waited = 0;
    for &id in &ids {
        match stream.push(id).unwrap() {
            Some(piece) => pieces.push(piece),
            None => waited += 1,
        }
    }
    assert!(
        waited > 0,
        "no character was split across tokens: the test proves nothing"
    );
    assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
    assert_eq!(pieces.concat(), tok.decode(&ids).unwrap());
    assert_eq!(pieces.concat(), text);
}

/// `moe tokenize ARGS`: (success, stdout, stderr).
fn moe_tokenize(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_moe"))
        .arg("tokenize")
        .args(args)
        .output()
        .unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (out.status.success(), text(out.stdout), text(out.stderr))
}

fn json_tail(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

#[test]
fn moe_tokenize_reads_special_token_text_as_text_unless_asked() {
    let tok = tokenizer();
    let text = "<|im_start|>user\nHail, Horatio!";
    let (ok, plain, err) = moe_tokenize(&["--text", text, "--json"]);
    assert!(ok, "{err}");
    let plain: Vec<u32> = serde_json::from_value(json_tail(&plain)["tokens"].clone()).unwrap();
    let start = tok.token_to_id("<|im_start|>").unwrap();
    assert!(!plain.contains(&start), "{plain:?}");
    assert_eq!(tok.decode(&plain).unwrap(), text);
    let (ok, parsed, _) = moe_tokenize(&["--text", text, "--parse-special", "--json"]);
    assert!(ok);
    let parsed: Vec<u32> = serde_json::from_value(json_tail(&parsed)["tokens"].clone()).unwrap();
    assert_eq!(parsed, tok.encode_with(text, false).unwrap());
    assert_eq!(parsed[0], start);

    // The reverse, and the same text from a file.
    let ids: Vec<String> = parsed.iter().map(u32::to_string).collect();
    let (ok, decoded, _) = moe_tokenize(&["--decode", &ids.join(","), "--json"]);
    assert!(ok);
    assert_eq!(json_tail(&decoded)["text"], text);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    let path = file.path().to_str().unwrap();
    let (ok, from_file, _) = moe_tokenize(&["--text-file", path, "--parse-special", "--json"]);
    assert!(ok);
    assert_eq!(json_tail(&from_file)["tokens"], serde_json::json!(parsed));
}

#[test]
fn moe_tokenize_adds_the_bos_only_when_asked() {
    // A Llama-style tokenizer.json whose post-processor prepends <s>.
    let inst = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat/inst");
    let model = inst.to_str().unwrap();
    let bos = Tokenizer::load(&inst).unwrap().token_to_id("<s>").unwrap();
    let tokens = |extra: &[&str]| -> Vec<u32> {
        let mut args = vec!["--model", model, "--text", "Hail", "--json"];
        args.extend_from_slice(extra);
        let (ok, out, err) = moe_tokenize(&args);
        assert!(ok, "{err}");
        serde_json::from_value(json_tail(&out)["tokens"].clone()).unwrap()
    };
    let (plain, with_bos) = (tokens(&[]), tokens(&["--add-special"]));
    assert_ne!(plain[0], bos);
    assert_eq!(with_bos[0], bos);
    assert_eq!(&with_bos[1..], &plain[..]);
}

#[test]
fn moe_tokenize_refuses_ids_outside_the_vocabulary_and_missing_input() {
    let (ok, _, err) = moe_tokenize(&["--decode", "1,4000000000"]);
    assert!(!ok);
    assert!(
        err.contains("token id 4000000000 is outside the vocabulary"),
        "{err}"
    );
    let (ok, _, err) = moe_tokenize(&[]);
    assert!(!ok);
    assert!(err.contains("--text"), "{err}");
}

/// tools/make_tokenizer_fixtures.py: the published tokenizers of the families we run (rebuilt
/// from llama.cpp's vocabulary files and checked there against the ids the hub's own tokenizers
/// give), with HF's ids and decodings of hard strings.
#[test]
fn family_tokenizers_encode_and_decode_hard_strings_as_hf_does() {
    #[derive(serde::Deserialize)]
    struct Cases {
        cases: Vec<Case>,
    }
    #[derive(serde::Deserialize)]
    struct Case {
        text: String,
        tokens: Vec<u32>,
        decoded: String,
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizers");
    // Qwen2/Qwen3-MoE, Granite-MoE, Mixtral.
    for family in ["qwen2", "starcoder", "llama-spm"] {
        let dir = root.join(family);
        let tok = Tokenizer::load(&dir).unwrap();
        let text = std::fs::read_to_string(dir.join("cases.json")).unwrap();
        let cases: Cases = serde_json::from_str(&text).unwrap();
        assert!(cases.cases.len() >= 60, "{family}");
        for case in &cases.cases {
            let what = format!("{family}: {:?}", case.text);
            assert_eq!(
                tok.encode_with(&case.text, false).unwrap(),
                case.tokens,
                "{what}"
            );
            assert_eq!(tok.decode(&case.tokens).unwrap(), case.decoded, "{what}");
        }
    }
}
