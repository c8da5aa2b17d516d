//! Text generation and chat sessions on the bundled model: streamed pieces add up to the text,
//! stop strings cut it, and a chat's reuse of earlier turns' keys and values gives exactly what
//! generating from the whole rendered conversation gives.

use moe_runtime::chat::Chat;
use moe_runtime::chat_template::{Message, RenderOptions};
use moe_runtime::generate::{self, Flow, GenerateOptions, StopReason};
use moe_runtime::sampling::SamplingConfig;
use moe_runtime::text::generate_text;
use moe_runtime::tokenizer::Tokenizer;
use moe_runtime::{LoadOptions, Model};

fn bundled() -> (Model, Tokenizer) {
    let dir = std::path::Path::new(moe_runtime::BUNDLED_MODEL);
    (
        Model::load(dir, &LoadOptions::default()).unwrap(),
        Tokenizer::load(dir).unwrap(),
    )
}

fn options(tok: &Tokenizer, max_new_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens,
        stop_tokens: tok.eos_ids().to_vec(),
        sampling: SamplingConfig {
            temperature: 0.8,
            seed: 7,
            ..SamplingConfig::default()
        },
    }
}

#[test]
fn streamed_text_adds_up_and_stop_strings_cut_it() {
    let (model, tok) = bundled();
    let prompt = tok.encode("KING LEAR:\n").unwrap();
    let opts = options(&tok, 48);
    let run = |stops: &[String]| {
        let mut pieces = String::new();
        let out = generate_text(
            &model,
            &tok,
            &mut model.new_cache(),
            &prompt,
            &opts,
            stops,
            |_, p| {
                pieces.push_str(p);
                Flow::Continue
            },
        )
        .unwrap();
        assert_eq!(pieces, out.text, "the pieces are the text");
        out
    };
    let free = run(&[]);
    let kept: Vec<u32> = free
        .generation
        .tokens
        .iter()
        .copied()
        .filter(|t| !opts.stop_tokens.contains(t))
        .collect();
    assert_eq!(free.text, tok.decode(&kept).unwrap());

    // A stop string from the middle of that text: the same draws, cut right before it.
    let chars: Vec<char> = free.text.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 3].iter().collect();
    let cut = run(std::slice::from_ref(&stop));
    let at = free.text.find(&stop).unwrap();
    assert_eq!(cut.text, free.text[..at], "stop string {stop:?}");
    assert_eq!(cut.generation.stop, StopReason::StopString);
    assert!(cut.generation.tokens.len() < free.generation.tokens.len());
}

#[test]
fn a_chat_turn_equals_generating_from_the_whole_conversation() {
    let (model, tok) = bundled();
    let opts = options(&tok, 24);
    let mut chat = Chat::new(&model, &tok, opts.clone()).with_system("Speak in verse.");
    chat.send("ROMEO:\nWhat light is that?", |_, _| Flow::Continue)
        .unwrap();
    let second = chat
        .send("JULIET:\nIt is the east.", |_, _| Flow::Continue)
        .unwrap();
    // The second turn reused the first turn's keys and values...
    let stats = &second.generation.stats;
    assert!(
        stats.prefilled_tokens < stats.prompt_tokens / 2,
        "{stats:?}"
    );
    // ...and gives what a fresh generation over the rendered conversation gives.
    let messages = &chat.messages()[..chat.messages().len() - 1];
    assert_eq!(messages.len(), 4);
    let render = RenderOptions {
        add_generation_prompt: true,
        ..RenderOptions::default()
    };
    let prompt = tok.apply_chat_template(messages, &render).unwrap().tokens;
    let fresh = generate::generate(&model, &prompt, &opts, |_| Flow::Continue).unwrap();
    assert_eq!(second.generation.tokens, fresh.tokens);
    assert_eq!(
        chat.messages().last().unwrap(),
        &Message::assistant(second.text.clone())
    );

    chat.reset();
    assert_eq!(chat.messages(), &[Message::system("Speak in verse.")]);
}
