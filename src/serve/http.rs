//! The routes: requests read (bodies and headers within their limits, the API key checked),
//! handed to the scheduler, and its events written back as OpenAI's responses, whole or as
//! server-sent events. Every refusal is OpenAI's error JSON with its status.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use openai_protocol::chat::{
    ChatChoice, ChatCompletionMessage, ChatCompletionRequest, ChatCompletionResponse,
    ChatCompletionStreamResponse, ChatMessageDelta, ChatStreamChoice,
};
use openai_protocol::common::{
    ErrorDetail, ErrorResponse, FunctionCallDelta, FunctionCallResponse, ToolCall, ToolCallDelta,
    Usage,
};
use openai_protocol::completion::{
    CompletionChoice, CompletionRequest, CompletionResponse, CompletionStreamChoice,
    CompletionStreamResponse,
};
use openai_protocol::models::{ListModelsResponse, ModelObject};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::api::{self, ApiError, Prepared};
use super::scheduler::{Event, Finished, Job};
use super::ServeState;
use crate::generate::StopReason;
use crate::reasoning::Part;

type AppState = Arc<ServeState>;

pub fn router(state: AppState) -> Router {
    let limit = state.max_body_bytes;
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(middleware::from_fn_with_state(state.clone(), header_limit))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorResponse {
            error: ErrorDetail {
                message: self.message.clone(),
                error_type: self.kind().to_string(),
                param: self.param.clone(),
                code: Some(self.status.as_u16().to_string()),
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// A refusal, counted.
fn refuse(state: &ServeState, error: ApiError) -> Response {
    state.metrics.rejected(error.status.as_u16());
    error.into_response()
}

/// A body that is not the request's JSON: the status axum chose (400, 413 or 415), in
/// OpenAI's form.
fn rejection(state: &ServeState, r: JsonRejection) -> Response {
    // A body of JSON that is not the request (a missing or mistyped field) is axum's 422;
    // OpenAI answers 400.
    let status = match r.status() {
        StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
        status => status,
    };
    refuse(state, ApiError::new(status, r.body_text()))
}

async fn header_limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if bytes > state.max_header_bytes {
        let message = format!(
            "the request's headers are {bytes} bytes, more than the {} this server reads",
            state.max_header_bytes
        );
        return refuse(
            &state,
            ApiError::new(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, message),
        );
    }
    next.run(request).await
}

async fn authorize(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(key) = &state.api_key else {
        return next.run(request).await;
    };
    if request.uri().path() == "/health" {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Compared in time independent of where they differ.
    let matches = given.is_some_and(|g| {
        g.len() == key.len()
            && g.bytes()
                .zip(key.bytes())
                .fold(0, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if !matches {
        let message = match given {
            None => "no API key given: send `Authorization: Bearer <key>`",
            Some(_) => "the API key is not valid",
        };
        return refuse(&state, ApiError::new(StatusCode::UNAUTHORIZED, message));
    }
    next.run(request).await
}

async fn not_found(State(state): State<AppState>, request: Request) -> Response {
    let message = format!("no route {} {}", request.method(), request.uri().path());
    refuse(&state, ApiError::new(StatusCode::NOT_FOUND, message))
}

async fn method_not_allowed(State(state): State<AppState>, request: Request) -> Response {
    let message = format!(
        "{} is not allowed on {}",
        request.method(),
        request.uri().path()
    );
    refuse(
        &state,
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, message),
    )
}

async fn health() -> &'static str {
    "ok"
}

async fn metrics(State(state): State<AppState>) -> Response {
    let text = state.metrics.render();
    let kind = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, kind)], text).into_response()
}

async fn models(State(state): State<AppState>) -> Json<ListModelsResponse> {
    Json(ListModelsResponse {
        object: "list".into(),
        data: vec![ModelObject {
            id: state.model_id.clone(),
            object: "model".into(),
            created: state.created as i64,
            owned_by: "moe-runtime".into(),
        }],
    })
}

async fn chat(
    State(state): State<AppState>,
    body: Result<Json<ChatCompletionRequest>, JsonRejection>,
) -> Response {
    let req = match body {
        Ok(Json(req)) => req,
        Err(r) => return rejection(&state, r),
    };
    // The template and the tokenizer are CPU work: off the runtime's threads.
    let prepared = {
        let state = state.clone();
        tokio::task::spawn_blocking(move || api::chat(&state, &req)).await
    };
    run(state, prepared, Kind::Chat).await
}

async fn completions(
    State(state): State<AppState>,
    body: Result<Json<Value>, JsonRejection>,
) -> Response {
    let mut body = match body {
        Ok(Json(body)) => body,
        Err(r) => return rejection(&state, r),
    };
    let ids = match api::prompt_ids(&mut body) {
        Ok(ids) => ids,
        Err(e) => return refuse(&state, e),
    };
    let req: CompletionRequest = match serde_json::from_value(body) {
        Ok(req) => req,
        Err(e) => {
            let message = format!("Failed to deserialize the JSON body into the target type: {e}");
            return refuse(&state, ApiError::new(StatusCode::BAD_REQUEST, message));
        }
    };
    let prepared = {
        let state = state.clone();
        tokio::task::spawn_blocking(move || api::completion(&state, &req, ids)).await
    };
    run(state, prepared, Kind::Text).await
}

/// Which API a response speaks.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Text,
}

async fn run(
    state: AppState,
    prepared: Result<Result<Prepared, ApiError>, tokio::task::JoinError>,
    kind: Kind,
) -> Response {
    let p = match prepared {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return refuse(&state, e),
        Err(e) => {
            let message = format!("preparing the request failed: {e}");
            return refuse(
                &state,
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message),
            );
        }
    };
    let (events, receiver) = unbounded_channel();
    let job = Job {
        prompt: p.prompt,
        max_new_tokens: p.max_new_tokens,
        sampling: p.sampling,
        stop_tokens: p.stop_tokens,
        ignore_eos: p.ignore_eos,
        stop_strings: p.stop_strings,
        events,
    };
    if state.scheduler.submit(job).is_err() {
        let message = "the server is busy: its queue is full; retry in a moment";
        return refuse(
            &state,
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message),
        );
    }
    let reply = Reply {
        id: match kind {
            Kind::Chat => format!("chatcmpl-{}", random_id()),
            Kind::Text => format!("cmpl-{}", random_id()),
        },
        model: state.model_id.clone(),
        created: now(),
        kind,
    };
    if p.stream {
        Sse::new(reply.stream(receiver, p.include_usage)).into_response()
    } else {
        reply.whole(receiver).await
    }
}

/// What every chunk or response of one request carries.
struct Reply {
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
    /// Waits for the end and answers in one response.
    async fn whole(self, mut receiver: UnboundedReceiver<Event>) -> Response {
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
        let finish_reason = Some(finish_reason(&done).to_string());
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
    fn stream(
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
        let reason = Some(finish_reason(done).to_string());
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
}

/// OpenAI's finish reason: `stop` (an end-of-sequence id or a stop string), `length` (the
/// token budget or the context), `tool_calls`.
fn finish_reason(done: &Finished) -> &'static str {
    match done.reason {
        _ if !done.tool_calls.is_empty() => "tool_calls",
        StopReason::StopToken | StopReason::StopString | StopReason::Callback => "stop",
        StopReason::MaxTokens | StopReason::ContextFull => "length",
    }
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

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
