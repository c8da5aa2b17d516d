//! The routes: requests read (bodies and headers within their limits, the API key checked),
//! handed to the scheduler, and its events written back as OpenAI's responses, whole or as
//! server-sent events. Every refusal is OpenAI's error JSON with its status.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use openai_protocol::chat::ChatCompletionRequest;
use openai_protocol::common::{ErrorDetail, ErrorResponse};
use openai_protocol::completion::CompletionRequest;
use openai_protocol::models::{ListModelsResponse, ModelObject};
use serde_json::Value;
use tokio::sync::mpsc::unbounded_channel;

use super::api::{self, ApiError, Prepared};
use super::reply::{Kind, Reply};
use super::scheduler::{Job, Refused};
use super::ServeState;

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
        .layer(middleware::from_fn_with_state(state.clone(), limits))
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

async fn limits(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    // A body declared past the limit is refused before a byte of it is read.
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(length) = declared.filter(|&n| n > state.max_body_bytes as u64) {
        let message = format!(
            "the request's body is {length} bytes, more than the {} this server reads",
            state.max_body_bytes
        );
        return refuse(
            &state,
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, message),
        );
    }
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

/// 200 while the scheduler runs; 503 once it has failed (a load balancer stops sending).
async fn health(State(state): State<AppState>) -> Response {
    match state.scheduler.is_alive() {
        true => "ok".into_response(),
        false => {
            let message = "the scheduler has stopped";
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message).into_response()
        }
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let text = state.metrics.render(state.scheduler.waiting());
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
    let arrived = Instant::now();
    let req = match body {
        Ok(Json(req)) => req,
        Err(r) => return rejection(&state, r),
    };
    if let Some(busy) = busy(&state) {
        return busy;
    }
    // The template and the tokenizer are CPU work: off the runtime's threads.
    let prepared = {
        let state = state.clone();
        tokio::task::spawn_blocking(move || api::chat(&state, &req)).await
    };
    run(state, prepared, Kind::Chat, arrived).await
}

async fn completions(
    State(state): State<AppState>,
    body: Result<Json<Value>, JsonRejection>,
) -> Response {
    let arrived = Instant::now();
    let mut body = match body {
        Ok(Json(body)) => body,
        Err(r) => return rejection(&state, r),
    };
    if let Some(busy) = busy(&state) {
        return busy;
    }
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
    run(state, prepared, Kind::Text, arrived).await
}

/// A 503 when the queue is full already: a request that cannot be queued is refused before its
/// template and tokenizer run (the queue itself refuses the rest, which race to it).
fn busy(state: &ServeState) -> Option<Response> {
    state.scheduler.is_full().then(|| queue_full(state))
}

fn queue_full(state: &ServeState) -> Response {
    let message = "the server is busy: its queue is full; retry in a moment";
    refuse(
        state,
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message),
    )
}

async fn run(
    state: AppState,
    prepared: Result<Result<Prepared, ApiError>, tokio::task::JoinError>,
    kind: Kind,
    arrived: Instant,
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
        raw: p.raw,
        arrived,
        stop_strings: p.stop_strings,
        events,
    };
    match state.scheduler.submit(job) {
        Ok(()) => {}
        Err(Refused::Busy(_)) => return queue_full(&state),
        Err(Refused::Stopped(_)) => {
            let message = "the server's scheduler has stopped; restart the server";
            return refuse(
                &state,
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message),
            );
        }
    }
    let reply = Reply::new(kind, &state.model_id);
    if p.stream {
        // Comment lines every 15 s keep a stream waiting in the queue alive through proxies.
        Sse::new(reply.stream(receiver, p.include_usage))
            .keep_alive(KeepAlive::default())
            .into_response()
    } else {
        reply.whole(receiver).await
    }
}
