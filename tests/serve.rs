//! `moe serve` on loopback, in process, over the bundled model: greedy answers under
//! concurrent load equal each answered alone, a client that goes away frees its place, a full
//! queue answers 503, and bad requests get OpenAI's error JSON with the right status.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moe_runtime::serve::{ServeOptions, Server};
use moe_runtime::tokenizer::Tokenizer;
use moe_runtime::{LoadOptions, Model, BUNDLED_MODEL};
use serde_json::{json, Value};

const MODEL: &str = "tiny";

/// A server on a free port, stopped when dropped.
struct Running {
    base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

fn start(opts: ServeOptions) -> Running {
    let dir = Path::new(BUNDLED_MODEL);
    let model = Model::load(dir, &LoadOptions::default()).unwrap();
    let tokenizer = Tokenizer::load(dir).unwrap();
    let opts = ServeOptions {
        model_id: MODEL.into(),
        ..opts
    };
    let server = Server::new(Arc::new(model), Arc::new(tokenizer), dir, opts).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    runtime.spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));
    Running {
        base,
        stop: Some(stop),
        runtime: Some(runtime),
    }
}

/// POSTs `body`; returns the status and the JSON answer.
fn post(base: &str, path: &str, body: &Value) -> (u16, Value) {
    answer(ureq::post(&format!("{base}{path}")).send_json(body.clone()))
}

fn answer(result: Result<ureq::Response, ureq::Error>) -> (u16, Value) {
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("no answer: {e}"),
    };
    let status = response.status();
    (status, response.into_json().unwrap())
}

fn chat(content: &str, max_tokens: usize) -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": content}],
           "max_tokens": max_tokens, "temperature": 0})
}

/// The streamed text of a request: its `data:` lines' content deltas (or text) joined, and
/// whether `[DONE]` ended it.
fn streamed(base: &str, path: &str, body: &Value) -> (String, bool) {
    let mut body = body.clone();
    body["stream"] = json!(true);
    let response = ureq::post(&format!("{base}{path}"))
        .send_json(body)
        .unwrap();
    let mut text = String::new();
    for line in BufReader::new(response.into_reader()).lines() {
        let line = line.unwrap();
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            return (text, true);
        }
        let chunk: Value = serde_json::from_str(data).unwrap();
        let choice = &chunk["choices"][0];
        let piece = choice["delta"]["content"]
            .as_str()
            .or(choice["text"].as_str());
        text.push_str(piece.unwrap_or(""));
    }
    (text, false)
}

/// The value of the metric line `name` (with its labels, if any) in a /metrics report.
fn metric(metrics: &str, name: &str) -> f64 {
    let line = metrics
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

fn text_of(path: &str, answer: &Value) -> String {
    let choice = &answer["choices"][0];
    match path {
        "/v1/chat/completions" => choice["message"]["content"].as_str(),
        _ => choice["text"].as_str(),
    }
    .unwrap()
    .to_string()
}

/// The requests of the load test: chat and text completions, prompts of different lengths.
fn requests() -> Vec<(&'static str, Value)> {
    let speeches = [
        "Speak, good sir.",
        "What news from the court?",
        "Tell me of the king, and of his sons, and of the war they wage in France.",
        "Be brief.",
        "Where is the duke?",
        "My lord, the queen is dead; what shall we do with the crown, the army and the sea?",
    ];
    let mut all = Vec::new();
    for (i, s) in speeches.iter().enumerate() {
        all.push(("/v1/chat/completions", chat(s, 12 + 3 * i)));
        let prompt = format!("{}:\n{s}\n", ["ROMEO", "JULIET", "KING HENRY"][i % 3]);
        let body = json!({"model": MODEL, "prompt": prompt, "max_tokens": 20, "temperature": 0});
        all.push(("/v1/completions", body));
    }
    all
}

#[test]
fn greedy_answers_under_load_equal_each_answered_alone() {
    // Small prompt chunks, so that prompts are read over several steps beside decodes.
    let server = start(ServeOptions {
        max_batch: 8,
        prefill_chunk: 5,
        ..ServeOptions::default()
    });
    let requests = requests();
    let alone: Vec<String> = requests
        .iter()
        .map(|(path, body)| {
            let (status, answer) = post(&server.base, path, body);
            assert_eq!(status, 200, "{answer}");
            text_of(path, &answer)
        })
        .collect();
    assert!(alone.iter().all(|t| !t.is_empty()));
    // All at once, twice each (one streamed), more than the batch holds.
    let base = &server.base;
    let together: Vec<(String, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = requests
            .iter()
            .map(|(path, body)| {
                scope.spawn(move || {
                    let (status, answer) = post(base, path, body);
                    assert_eq!(status, 200, "{answer}");
                    let (text, done) = streamed(base, path, body);
                    assert!(done, "the stream of {body} ended without [DONE]");
                    (text_of(path, &answer), text)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Some steps did run several sequences together.
    let metrics = ureq::get(&format!("{base}/metrics")).call().unwrap();
    let metrics = metrics.into_string().unwrap();
    let single = metric(&metrics, "moe_batch_sequences_bucket{le=\"1.0\"}");
    assert!(
        single < metric(&metrics, "moe_batch_sequences_count"),
        "{metrics}"
    );
    for ((want, (whole, streamed)), (_, body)) in alone.iter().zip(&together).zip(&requests) {
        assert_eq!(whole, want, "{body}");
        assert_eq!(streamed, want, "{body} streamed");
    }
}

#[test]
fn a_client_that_goes_away_frees_its_place() {
    let server = start(ServeOptions {
        max_batch: 1,
        ..ServeOptions::default()
    });
    // A stream of up to the whole context, dropped after its first bytes.
    let host = server.base.trim_start_matches("http://");
    let mut body = chat("Speak on, and never stop.", 1000);
    body["stream"] = json!(true);
    let body = body.to_string();
    let mut socket = TcpStream::connect(host).unwrap();
    write!(
        socket,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut first = [0u8; 256];
    let n = socket.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    drop(socket);
    // The only place in the batch is freed: the next request is answered, and the metrics
    // count the cancelled one.
    let (status, _) = post(&server.base, "/v1/chat/completions", &chat("Hello.", 4));
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = ureq::get(&format!("{}/metrics", server.base))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        if metrics.contains("moe_requests_total{outcome=\"cancelled\"} 1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no cancelled request in:\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_full_queue_answers_503_with_retry_after() {
    let server = start(ServeOptions {
        max_batch: 1,
        max_queue: 1,
        ..ServeOptions::default()
    });
    let base = &server.base;
    let results: Vec<(u16, Option<String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                scope.spawn(move || {
                    let body = chat(&format!("Speak, {i}."), 200);
                    let url = format!("{base}/v1/chat/completions");
                    match ureq::post(&url).send_json(body) {
                        Ok(r) => (r.status(), None),
                        Err(ureq::Error::Status(code, r)) => {
                            (code, r.header("retry-after").map(str::to_string))
                        }
                        Err(e) => panic!("{e}"),
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let busy: Vec<_> = results.iter().filter(|(s, _)| *s == 503).collect();
    assert!(!busy.is_empty(), "{results:?}");
    assert!(busy.iter().all(|(_, retry)| retry.as_deref() == Some("1")));
    assert!(
        results.iter().all(|(s, _)| *s == 200 || *s == 503),
        "{results:?}"
    );
}

#[test]
fn bad_requests_get_openai_errors_with_their_status() {
    let server = start(ServeOptions::default());
    let base = &server.base;
    let with = |patch: Value| {
        let mut body = chat("Hello.", 8);
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    // (what, body, status, the field named)
    let cases = [
        (
            "unknown model",
            with(json!({"model": "gpt-4"})),
            404,
            Some("model"),
        ),
        ("n = 2", with(json!({"n": 2})), 400, Some("n")),
        (
            "logprobs",
            with(json!({"logprobs": true})),
            400,
            Some("logprobs"),
        ),
        (
            "temperature < 0",
            with(json!({"temperature": -1})),
            400,
            Some("temperature"),
        ),
        ("top_p > 1", with(json!({"top_p": 1.5})), 400, Some("top_p")),
        (
            "no messages",
            with(json!({"messages": []})),
            400,
            Some("messages"),
        ),
        (
            "messages not a list",
            with(json!({"messages": "hi"})),
            400,
            None,
        ),
        (
            "max_tokens past the context",
            with(json!({"max_tokens": 5000})),
            400,
            Some("max_tokens"),
        ),
        (
            "max_tokens 0",
            with(json!({"max_tokens": 0})),
            400,
            Some("max_tokens"),
        ),
        (
            "empty stop string",
            with(json!({"stop": [""]})),
            400,
            Some("stop"),
        ),
        (
            "stop id past the vocabulary",
            with(json!({"stop_token_ids": [99999]})),
            400,
            Some("stop_token_ids"),
        ),
        (
            "an image",
            with(json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:,"}}]}]})),
            400,
            Some("messages"),
        ),
        (
            "frequency_penalty",
            with(json!({"frequency_penalty": 0.5})),
            400,
            Some("frequency_penalty"),
        ),
        (
            "a stop string of 2 KiB",
            with(json!({"stop": ["x".repeat(2048)]})),
            400,
            Some("stop"),
        ),
        (
            "2000 stop ids",
            with(json!({"stop_token_ids": vec![1; 2000]})),
            400,
            Some("stop_token_ids"),
        ),
        (
            "a forced tool call",
            with(json!({"tool_choice": "required",
                        "tools": [{"type": "function", "function": {"name": "tide"}}]})),
            400,
            Some("tool_choice"),
        ),
        (
            "a prompt too long",
            with(json!({"messages": [{"role": "user", "content": "word ".repeat(3000)}]})),
            400,
            Some("messages"),
        ),
    ];
    for (what, body, status, param) in cases {
        let (got, answer) = post(base, "/v1/chat/completions", &body);
        assert_eq!(got, status, "{what}: {answer}");
        let error = &answer["error"];
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {answer}"
        );
        assert!(error["type"].is_string(), "{what}: {answer}");
        if let Some(param) = param {
            assert_eq!(error["param"], param, "{what}: {answer}");
        }
    }
    // Text completions: several prompts at once, echo.
    let text = |patch: Value| {
        let mut body = json!({"model": MODEL, "prompt": "ROMEO:", "max_tokens": 4});
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    for (what, body, param) in [
        ("two prompts", text(json!({"prompt": ["a", "b"]})), "prompt"),
        (
            "two prompts of ids",
            text(json!({"prompt": [[1], [2]]})),
            "prompt",
        ),
        (
            "an id past u32",
            text(json!({"prompt": [1, 5000000000u64]})),
            "prompt",
        ),
        (
            "an id past the vocabulary",
            text(json!({"prompt": [1, 99999]})),
            "prompt",
        ),
        ("an empty prompt", text(json!({"prompt": ""})), "prompt"),
        ("echo", text(json!({"echo": true})), "echo"),
        (
            "repetition_penalty 0",
            text(json!({"repetition_penalty": 0})),
            "repetition_penalty",
        ),
    ] {
        let (status, answer) = post(base, "/v1/completions", &body);
        assert_eq!(status, 400, "{what}: {answer}");
        assert_eq!(answer["error"]["param"], param, "{what}: {answer}");
    }
    // Not JSON, a body past the limit, an unknown route, headers past the limit.
    let raw = |path: &str, body: &str| {
        answer(
            ureq::post(&format!("{base}{path}"))
                .set("Content-Type", "application/json")
                .send_string(body),
        )
    };
    assert_eq!(raw("/v1/chat/completions", "{not json").0, 400);
    // A body past the limit is refused from its declared length, before it is read: sent
    // whole, the client could be cut off mid-write by the answer.
    let host = base.trim_start_matches("http://");
    let mut socket = TcpStream::connect(host).unwrap();
    write!(
        socket,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{{",
        5 << 20
    )
    .unwrap();
    let mut head = [0u8; 64];
    let n = socket.read(&mut head).unwrap();
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert_eq!(raw("/v1/nothing", "{}").0, 404);
    let (status, refused) = raw("/v1/models", "{}");
    assert_eq!(status, 405, "{refused}");
    assert!(refused["error"]["message"].is_string());
    let long = "x".repeat(40 << 10);
    let (status, _) = answer(
        ureq::get(&format!("{base}/v1/models"))
            .set("X-Pad", &long)
            .call(),
    );
    assert_eq!(status, 431);
    // The server still answers.
    assert_eq!(
        post(base, "/v1/chat/completions", &chat("Hello.", 2)).0,
        200
    );
}

#[test]
fn the_api_key_guards_every_route_but_health() {
    let server = start(ServeOptions {
        api_key: Some("sesame".into()),
        ..ServeOptions::default()
    });
    let url = |path: &str| format!("{}{path}", server.base);
    assert_eq!(ureq::get(&url("/health")).call().unwrap().status(), 200);
    for key in [None, Some("Bearer wrong"), Some("sesame")] {
        let mut request = ureq::get(&url("/v1/models"));
        if let Some(key) = key {
            request = request.set("Authorization", key);
        }
        let (status, answer) = answer(request.call());
        assert_eq!(status, 401, "{key:?}: {answer}");
        assert_eq!(answer["error"]["type"], "authentication_error");
    }
    let (status, answer) = answer(
        ureq::get(&url("/v1/models"))
            .set("Authorization", "Bearer sesame")
            .call(),
    );
    assert_eq!(status, 200);
    assert_eq!(answer["data"][0]["id"], MODEL);
}

#[test]
fn metrics_count_requests_tokens_and_cpu_time() {
    let server = start(ServeOptions::default());
    let (status, answer) = post(&server.base, "/v1/chat/completions", &chat("Hello.", 6));
    assert_eq!(status, 200);
    let usage = &answer["usage"];
    let prompt = usage["prompt_tokens"].as_u64().unwrap();
    let completion = usage["completion_tokens"].as_u64().unwrap();
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), prompt + completion);
    let metrics = ureq::get(&format!("{}/metrics", server.base))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let value = |name: &str| metric(&metrics, name);
    assert_eq!(value("moe_prefill_tokens_total"), prompt as f64);
    // Every new token but the last is fed back.
    assert_eq!(value("moe_decode_tokens_total"), (completion - 1) as f64);
    assert!(value("moe_process_core_seconds") > 0.0);
    assert_eq!(value("moe_queue_depth"), 0.0);
    assert!(metrics.ends_with("# EOF\n"));
}

#[test]
fn a_prompt_of_token_ids_is_answered_as_its_text() {
    let server = start(ServeOptions::default());
    let tokenizer = Tokenizer::load(Path::new(BUNDLED_MODEL)).unwrap();
    let prompt = "KING HENRY:\nOnce more unto the breach";
    let ids = tokenizer.encode(prompt).unwrap();
    let body = |prompt: Value| json!({"model": MODEL, "prompt": prompt, "max_tokens": 12, "temperature": 0});
    let (status, by_text) = post(&server.base, "/v1/completions", &body(json!(prompt)));
    assert_eq!(status, 200, "{by_text}");
    for ids in [json!(ids), json!([ids])] {
        let (status, by_ids) = post(&server.base, "/v1/completions", &body(ids));
        assert_eq!(status, 200, "{by_ids}");
        assert_eq!(text_of("", &by_ids), text_of("", &by_text));
        for count in ["prompt_tokens", "completion_tokens"] {
            assert_eq!(by_ids["usage"][count], by_text["usage"][count]);
        }
    }
}

#[test]
fn ignore_eos_generates_to_the_budget() {
    let server = start(ServeOptions::default());
    // The bundled model ends a chat answer after some twenty tokens.
    let (status, short) = post(&server.base, "/v1/chat/completions", &chat("Hello.", 200));
    assert_eq!(status, 200);
    assert_eq!(short["choices"][0]["finish_reason"], "stop");
    let mut body = chat("Hello.", 200);
    body["ignore_eos"] = json!(true);
    let (status, long) = post(&server.base, "/v1/chat/completions", &body);
    assert_eq!(status, 200);
    assert_eq!(long["choices"][0]["finish_reason"], "length");
    assert_eq!(long["usage"]["completion_tokens"], 200);
}

#[test]
fn text_completions_default_to_16_tokens_and_tiny_temperatures_are_greedy() {
    let server = start(ServeOptions::default());
    let body = json!({"model": MODEL, "prompt": "ROMEO:", "ignore_eos": true});
    let (status, answer) = post(&server.base, "/v1/completions", &body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["usage"]["completion_tokens"], 16);
    // 1/T would overflow the logits: greedy instead.
    let greedy = chat("Speak.", 12);
    let mut tiny = greedy.clone();
    tiny["temperature"] = json!(1e-30);
    let (_, a) = post(&server.base, "/v1/chat/completions", &greedy);
    let (status, b) = post(&server.base, "/v1/chat/completions", &tiny);
    assert_eq!(status, 200, "{b}");
    assert_eq!(
        text_of("/v1/chat/completions", &a),
        text_of("/v1/chat/completions", &b)
    );
    let health = ureq::get(&format!("{}/health", server.base))
        .call()
        .unwrap();
    assert_eq!(health.into_string().unwrap(), "ok");
}

#[test]
fn a_chat_turn_reuses_the_cache_of_the_turn_before() {
    let server = start(ServeOptions::default());
    let first = chat("Speak, good sir.", 24);
    let (status, answer) = post(&server.base, "/v1/chat/completions", &first);
    assert_eq!(status, 200);
    assert_eq!(answer["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let said = text_of("/v1/chat/completions", &answer);
    let mut second = first.clone();
    second["messages"] = json!([
        {"role": "user", "content": "Speak, good sir."},
        {"role": "assistant", "content": said},
        {"role": "user", "content": "And then?"},
    ]);
    let (status, answer) = post(&server.base, "/v1/chat/completions", &second);
    assert_eq!(status, 200, "{answer}");
    let cached = answer["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    let prompt = answer["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(cached > 0 && cached < prompt, "{answer}");
    // The same answer as a server that computes the whole prompt.
    let fresh = start(ServeOptions::default());
    let (_, want) = post(&fresh.base, "/v1/chat/completions", &second);
    assert_eq!(want["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(
        text_of("/v1/chat/completions", &answer),
        text_of("/v1/chat/completions", &want)
    );
}
