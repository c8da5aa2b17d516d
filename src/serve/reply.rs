//! A request's events from the scheduler written back as OpenAI's responses: one JSON answer
//! at the end, or server-sent events as the text comes (`chat.completion.chunk` or
//! `text_completion` chunks, the finish reason, the usage when asked for, `[DONE]`).

use std::convert::Infallible;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use openai_protocol::chat::{
    ChatChoice, ChatCompletionMessage, ChatCompletionResponse, ChatCompletionStreamResponse,
    ChatMessageDelta, ChatStreamChoice,
};
use openai_protocol::common::{
    ErrorDetail, ErrorResponse, FunctionCallDelta, FunctionCallResponse, ToolCall, ToolCallDelta,
    Usage,
};
use openai_protocol::completion::{
    CompletionChoice, CompletionResponse, CompletionStreamChoice, CompletionStreamResponse,
};
use serde::Serialize;
use tokio::sync::mpsc::UnboundedReceiver;

use super::api::ApiError;
use super::scheduler::{Event, Finished};
use crate::reasoning::Part;

/// Which API a response speaks.
#[derive(Clone, Copy, PartialEq)]
pub enum Kind {
    Chat,
    Text,
}

/// What every chunk or response of one request carries.
pub struct Reply {
    id: String,
    model: String,
    created: u64,
    kind: Kind,
}

/// The text of a request so far.
#[derive(Default)]
struct Collected {
    answer: String,
    reasoning: String,
}

impl Reply {
    pub fn new(kind: Kind, model: &str) -> Reply {
        let prefix = match kind {
            Kind::Chat => "chatcmpl",
            Kind::Text => "cmpl",
        };
        Reply {
            id: format!("{prefix}-{}", random_id()),
            model: model.to_string(),
            created: now(),
            kind,
        }
    }

    /// Waits for the end and answers in one response.
    pub async fn whole(self, mut receiver: UnboundedReceiver<Event>) -> Response {
        let mut text = Collected::default();
        while let Some(event) = receiver.recv().await {
            match event {
                Event::Text(Part::Answer, piece) => text.answer.push_str(&piece),
                Event::Text(Part::Reasoning, piece) => text.reasoning.push_str(&piece),
                Event::Text(Part::ToolCall, _) => {}
                Event::Failed(message) => {
                    return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
                        .into_response()
                }
                Event::Done(done) => return self.response(text, done),
            }
        }
        let message = "the scheduler ended before the request did";
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message).into_response()
    }

    fn response(&self, text: Collected, done: Finished) -> Response {
        let usage = Some(usage(&done));
        let finish_reason = Some(done.finish_reason().to_string());
        match self.kind {
            Kind::Chat => {
                let tool_calls = tool_calls(&done);
                let message = ChatCompletionMessage {
                    role: "assistant".into(),
                    content: (tool_calls.is_none() || !text.answer.is_empty())
                        .then_some(text.answer),
                    refusal: None,
                    annotations: Vec::new(),
                    tool_calls,
                    reasoning_content: (!text.reasoning.is_empty()).then_some(text.reasoning),
                };
                Json(ChatCompletionResponse {
                    id: self.id.clone(),
                    object: "chat.completion".into(),
                    created: self.created,
                    model: self.model.clone(),
                    choices: vec![ChatChoice {
                        index: 0,
                        message,
                        logprobs: None,
                        finish_reason,
                        matched_stop: None,
                        hidden_states: None,
                    }],
                    usage,
                    system_fingerprint: None,
                    service_tier: "default".into(),
                })
                .into_response()
            }
            Kind::Text => Json(CompletionResponse {
                id: self.id.clone(),
                object: "text_completion".into(),
                created: self.created,
                model: self.model.clone(),
                choices: vec![CompletionChoice {
                    text: text.reasoning + &text.answer,
                    index: 0,
                    logprobs: None,
                    finish_reason,
                    matched_stop: None,
                }],
                usage,
                system_fingerprint: None,
            })
            .into_response(),
        }
    }

    /// The answer as server-sent events: a chunk per piece of text, then the finish reason,
    /// the usage when asked for, and `[DONE]`. A client that goes away drops the stream and
    /// with it the receiver: the scheduler frees its place at the next step.
    pub fn stream(
        self,
        receiver: UnboundedReceiver<Event>,
        include_usage: bool,
    ) -> impl Stream<Item = Result<SseEvent, Infallible>> {
        let first = (self.kind == Kind::Chat).then(|| {
            self.chunk(ChatMessageDelta {
                role: Some("assistant".into()),
                content: Some(String::new()),
                tool_calls: None,
                reasoning_content: None,
            })
        });
        let this = Arc::new(self);
        let events = stream::unfold(Some(receiver), move |receiver| {
            let this = this.clone();
            async move {
                let mut receiver = receiver?;
                let out = match receiver.recv().await {
                    Some(Event::Text(part, piece)) => this.piece(part, piece),
                    Some(Event::Done(done)) => {
                        return Some((this.last(&done, include_usage), None));
                    }
                    Some(Event::Failed(message)) => {
                        let error = ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message);
                        return Some((vec![error_event(&error), done_event()], None));
                    }
                    None => {
                        let message = "the scheduler ended before the request did";
                        let error = ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message);
                        return Some((vec![error_event(&error), done_event()], None));
                    }
                };
                Some((out, Some(receiver)))
            }
        });
        stream::iter(first)
            .chain(events.flat_map(stream::iter))
            .map(Ok)
    }

    /// A piece of text as its chunk; tool-call text is sent whole at the end instead.
    fn piece(&self, part: Part, piece: String) -> Vec<SseEvent> {
        let delta = |content, reasoning_content| ChatMessageDelta {
            role: None,
            content,
            tool_calls: None,
            reasoning_content,
        };
        match (self.kind, part) {
            (_, Part::ToolCall) => Vec::new(),
            (Kind::Text, _) => vec![self.text_chunk(piece, None, None)],
            (Kind::Chat, Part::Answer) => vec![self.chunk(delta(Some(piece), None))],
            (Kind::Chat, Part::Reasoning) => vec![self.chunk(delta(None, Some(piece)))],
        }
    }

    /// The closing events: tool calls, the finish reason, the usage, `[DONE]`.
    fn last(&self, done: &Finished, include_usage: bool) -> Vec<SseEvent> {
        let mut out = Vec::new();
        let reason = Some(done.finish_reason().to_string());
        match self.kind {
            Kind::Chat => {
                if let Some(calls) = tool_calls(done) {
                    let deltas = calls
                        .into_iter()
                        .enumerate()
                        .map(|(i, call)| ToolCallDelta {
                            index: i as u32,
                            id: Some(call.id),
                            tool_type: Some(call.tool_type),
                            function: Some(FunctionCallDelta {
                                name: Some(call.function.name),
                                arguments: call.function.arguments,
                            }),
                        })
                        .collect();
                    out.push(self.chunk(ChatMessageDelta {
                        role: None,
                        content: None,
                        tool_calls: Some(deltas),
                        reasoning_content: None,
                    }));
                }
                out.push(self.chat_event(
                    vec![ChatStreamChoice {
                        index: 0,
                        delta: ChatMessageDelta {
                            role: None,
                            content: None,
                            tool_calls: None,
                            reasoning_content: None,
                        },
                        logprobs: None,
                        finish_reason: reason,
                        matched_stop: None,
                    }],
                    None,
                ));
                if include_usage {
                    out.push(self.chat_event(Vec::new(), Some(usage(done))));
                }
            }
            Kind::Text => {
                out.push(self.text_chunk(String::new(), reason, None));
                if include_usage {
                    out.push(json_event(&CompletionStreamResponse {
                        id: self.id.clone(),
                        object: "text_completion".into(),
                        created: self.created,
                        choices: Vec::new(),
                        model: self.model.clone(),
                        system_fingerprint: None,
                        usage: Some(usage(done)),
                    }));
                }
            }
        }
        out.push(done_event());
        out
    }

    fn chunk(&self, delta: ChatMessageDelta) -> SseEvent {
        self.chat_event(
            vec![ChatStreamChoice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason: None,
                matched_stop: None,
            }],
            None,
        )
    }

    fn chat_event(&self, choices: Vec<ChatStreamChoice>, usage: Option<Usage>) -> SseEvent {
        json_event(&ChatCompletionStreamResponse {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: None,
            choices,
            usage,
        })
    }

    fn text_chunk(
        &self,
        text: String,
        finish_reason: Option<String>,
        usage: Option<Usage>,
    ) -> SseEvent {
        json_event(&CompletionStreamResponse {
            id: self.id.clone(),
            object: "text_completion".into(),
            created: self.created,
            choices: vec![CompletionStreamChoice {
                text,
                index: 0,
                logprobs: None,
                finish_reason,
            }],
            model: self.model.clone(),
            system_fingerprint: None,
            usage,
        })
    }
}

fn json_event(value: &impl Serialize) -> SseEvent {
    SseEvent::default().data(serde_json::to_string(value).expect("a response is JSON"))
}

fn error_event(error: &ApiError) -> SseEvent {
    json_event(&ErrorResponse {
        error: ErrorDetail {
            message: error.message.clone(),
            error_type: error.kind().to_string(),
            param: None,
            code: Some(error.status.as_u16().to_string()),
        },
    })
}

fn done_event() -> SseEvent {
    SseEvent::default().data("[DONE]")
}

fn usage(done: &Finished) -> Usage {
    Usage::from_counts(done.prompt_tokens as u32, done.completion_tokens as u32)
        .with_cached_tokens(done.cached_tokens as u32)
}

fn tool_calls(done: &Finished) -> Option<Vec<ToolCall>> {
    (!done.tool_calls.is_empty()).then(|| {
        done.tool_calls
            .iter()
            .map(|call| ToolCall {
                id: format!("call_{}", random_id()),
                tool_type: "function".into(),
                function: FunctionCallResponse {
                    name: call.name.clone(),
                    arguments: Some(call.arguments.clone()),
                },
            })
            .collect()
    })
}

fn random_id() -> String {
    format!("{:024x}", rand::random::<u128>() >> 32)
}

/// Unix seconds, for `created` fields.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
