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
