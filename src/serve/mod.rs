//! An OpenAI-compatible HTTP server over one model: `POST /v1/chat/completions`,
//! `POST /v1/completions` (each streamed as server-sent events, or not), `GET /v1/models`,
//! `GET /health` and `GET /metrics`, with requests batched continuously ([`scheduler`]).
//!
//! ```no_run
//! use std::sync::Arc;
//! use moe_runtime::serve::{Server, ServeOptions};
//! use moe_runtime::tokenizer::Tokenizer;
//! use moe_runtime::{LoadOptions, Model};
//!
//! # async fn run() -> anyhow::Result<()> {
//! let dir = std::path::Path::new(moe_runtime::BUNDLED_MODEL);
//! let model = Model::load(dir, &LoadOptions::default())?;
//! let tokenizer = Tokenizer::load(dir)?;
//! let server = Server::new(Arc::new(model), Arc::new(tokenizer), dir, ServeOptions::default())?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! server.serve(listener, std::future::pending()).await?;
//! # Ok(())
//! # }
//! ```

pub mod api;
mod http;
pub mod metrics;
mod reply;
pub mod scheduler;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use crate::energy::EnergyMeter;
use crate::error::{Error, Result};
use crate::layers::Model;
use crate::reasoning::OutputFormat;
use crate::sampling::SamplingConfig;
use crate::tokenizer::Tokenizer;
use metrics::Metrics;
use scheduler::{BatchOptions, Scheduler};

/// How the server runs.
pub struct ServeOptions {
    /// The name clients give as `model` (`GET /v1/models` lists it).
    pub model_id: String,
    /// When set, every request but `GET /health` must carry `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Sequences in the running batch at most.
    pub max_batch: usize,
    /// Requests waiting for the batch at most; past it, 503 with Retry-After.
    pub max_queue: usize,
    /// Prompt tokens read per step, over all the prompts being read.
    pub prefill_chunk: usize,
    /// Positions per sequence (prompt and answer); the model's context when `None`.
    pub max_context: Option<usize>,
    /// Request bodies larger than this are refused with 413.
    pub max_body_bytes: usize,
    /// Requests whose headers, names and values together, pass this are refused with 431.
    pub max_header_bytes: usize,
    /// Where `/metrics` reads joules from; only CPU time is reported without one.
    pub energy: Option<EnergyMeter>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            model_id: "moe".into(),
            api_key: None,
            max_batch: 32,
            max_queue: 256,
            prefill_chunk: 256,
            max_context: None,
            max_body_bytes: 4 << 20,
            max_header_bytes: 32 << 10,
            energy: None,
        }
    }
}

/// What every request handler reads.
pub struct ServeState {
    pub model_id: String,
    pub tokenizer: Arc<Tokenizer>,
    /// The checkpoint's sampling defaults (generation_config.json); requests override them.
    pub sampling: SamplingConfig,
    /// Positions per sequence.
    pub context: usize,
    pub vocab_size: usize,
    /// The message field this model's template reads an assistant's reasoning from.
    pub reasoning_field: &'static str,
    pub api_key: Option<String>,
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
    pub scheduler: Scheduler,
    pub metrics: Arc<Metrics>,
    /// When the server started (Unix seconds), for `created` fields.
    pub created: u64,
}

/// A model ready to serve.
pub struct Server {
    state: Arc<ServeState>,
}

impl Server {
    /// Starts the scheduler over `model` and its `tokenizer`, loaded from the checkpoint in
    /// `dir` (its generation_config.json gives the sampling defaults and end-of-sequence ids).
    pub fn new(
        model: Arc<Model>,
        tokenizer: Arc<Tokenizer>,
        dir: &Path,
        opts: ServeOptions,
    ) -> Result<Server> {
        let model_context = model.config().max_position_embeddings;
        let context = match opts.max_context {
            Some(n) if n == 0 || n > model_context => {
                return Err(Error::Input(format!(
                    "a context of {n} is out of range 1..={model_context} (the model's \
                     max_position_embeddings)"
                )))
            }
            Some(n) => n,
            None => model_context,
        };
        let limit = crate::Limits::current().max_batch;
        if opts.max_batch == 0 || opts.max_batch > limit {
            return Err(Error::Input(format!(
                "a batch of {} is out of range 1..={limit} (Limits::max_batch)",
                opts.max_batch
            )));
        }
        if opts.max_queue == 0 {
            return Err(Error::Input(
                "a queue of 0 requests would refuse every one".into(),
            ));
        }
        let stop_tokens = crate::generate::stop_tokens(dir, Some(&tokenizer))?;
        let metrics = Arc::new(Metrics::new(opts.energy));
        if metrics.has_energy() {
            // Counters that wrap are read often enough to see each wrap; the thread ends with
            // the server.
            let weak = Arc::downgrade(&metrics);
            std::thread::Builder::new()
                .name("moe-energy".into())
                .spawn(move || loop {
                    std::thread::sleep(std::time::Duration::from_secs(30));
                    match weak.upgrade() {
                        Some(metrics) => metrics.read_energy(),
                        None => return,
                    }
                })
                .map_err(|e| Error::Input(format!("starting the energy reader: {e}")))?;
        }
        let batch = BatchOptions {
            max_batch: opts.max_batch,
            max_queue: opts.max_queue,
            prefill_chunk: opts.prefill_chunk,
            context,
        };
        let state = ServeState {
            model_id: opts.model_id,
            sampling: SamplingConfig::from_generation_config(dir)?,
            context,
            vocab_size: model.config().vocab_size,
            reasoning_field: OutputFormat::of(&tokenizer).reasoning_field(),
            api_key: opts.api_key,
            max_body_bytes: opts.max_body_bytes,
            max_header_bytes: opts.max_header_bytes,
            scheduler: Scheduler::start(
                model,
                tokenizer.clone(),
                stop_tokens,
                batch,
                metrics.clone(),
            )?,
            tokenizer,
            metrics,
            created: reply::now(),
        };
        Ok(Server {
            state: Arc::new(state),
        })
    }

    /// The routes, for serving on a listener of the caller's.
    pub fn router(&self) -> axum::Router {
        http::router(self.state.clone())
    }

    /// Serves on `listener` until `shutdown` completes; requests in flight then finish.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        use axum::serve::ListenerExt;
        // Each chunk of a stream leaves at once: with Nagle's algorithm, a token written while
        // the last is unacknowledged waits for the client's delayed ACK (~40 ms on Linux).
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }
}
