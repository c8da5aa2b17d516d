//! A conversation with a model: messages kept in order, each turn rendered through the chat
//! template, and the keys and values of earlier turns reused rather than computed again.

use crate::chat_template::{Message, RenderOptions};
use crate::error::Result;
use crate::generate::{Flow, GenerateOptions};
use crate::layers::{Cache, Model};
use crate::text::{generate_text, TextGeneration};
use crate::tokenizer::Tokenizer;

/// A multi-turn chat over one model and its tokenizer (which must have a chat template).
pub struct Chat<'a> {
    model: &'a Model,
    tokenizer: &'a Tokenizer,
    pub options: GenerateOptions,
    pub stop_strings: Vec<String>,
    system: Option<String>,
    messages: Vec<Message>,
    cache: Cache,
    /// The ids whose keys and values `cache` holds.
    cached: Vec<u32>,
}

impl<'a> Chat<'a> {
    pub fn new(model: &'a Model, tokenizer: &'a Tokenizer, options: GenerateOptions) -> Self {
        Chat {
            model,
            tokenizer,
            options,
            stop_strings: Vec::new(),
            system: None,
            messages: Vec::new(),
            cache: model.new_cache(),
            cached: Vec::new(),
        }
    }

    /// Starts every conversation with this system message (kept across [`Chat::reset`]).
    pub fn with_system(mut self, text: impl Into<String>) -> Self {
        self.system = Some(text.into());
        self.reset();
        self
    }

    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// Forgets the conversation (but not the system message).
    pub fn reset(&mut self) {
        self.messages = self.system.iter().map(Message::system).collect();
        self.cache.reset();
        self.cached.clear();
    }

    /// Adds the user's message, generates the answer (streamed to `on_text`) and adds it to
    /// the conversation. Fails, leaving the conversation as it was, if the template refuses
    /// the conversation or the model fails.
    pub fn send(
        &mut self,
        user: &str,
        on_text: impl FnMut(&str) -> Flow,
    ) -> Result<TextGeneration> {
        self.messages.push(Message::user(user));
        let answer = self.answer(on_text);
        match &answer {
            Ok(answer) => self.messages.push(Message::assistant(answer.text.clone())),
            Err(_) => {
                self.messages.pop();
                self.cache.reset();
                self.cached.clear();
            }
        }
        answer
    }

    fn answer(&mut self, on_text: impl FnMut(&str) -> Flow) -> Result<TextGeneration> {
        let opts = RenderOptions {
            add_generation_prompt: true,
            ..RenderOptions::default()
        };
        let prompt = self
            .tokenizer
            .apply_chat_template(&self.messages, &opts)?
            .tokens;
        // Earlier turns usually render to the same ids again: keep their keys and values. At
        // least one token must be fed, to get logits.
        let shared = self
            .cached
            .iter()
            .zip(&prompt)
            .take_while(|(a, b)| a == b)
            .count()
            .min(prompt.len().saturating_sub(1));
        self.cache.truncate(shared)?;
        self.cached.truncate(self.cache.position());
        let answer = generate_text(
            self.model,
            self.tokenizer,
            &mut self.cache,
            &prompt,
            &self.options,
            &self.stop_strings,
            on_text,
        )?;
        // The cache now holds the prompt and the answer but its last token (or less, when the
        // context filled up).
        self.cached = prompt;
        self.cached.extend_from_slice(&answer.generation.tokens);
        self.cached.truncate(self.cache.position());
        Ok(answer)
    }
}
