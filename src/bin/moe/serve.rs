//! `moe serve`: the model behind an OpenAI-compatible HTTP API, requests batched continuously.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use moe_runtime::serve::{ServeOptions, Server};
use moe_runtime::tokenizer::Tokenizer;
use moe_runtime::Limits;

use crate::bounds;
use crate::common::Common;
use crate::energy::EnergyArgs;
use crate::output::note;

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0 picks a free port; the address is printed on stdout either way.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Sequences decoded together at most.
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// Requests waiting for the batch at most; past it, 503 with Retry-After.
    #[arg(long, default_value_t = 256)]
    max_queue: usize,
    /// Prompt tokens read per step (over every prompt being read): a long prompt is read in
    /// chunks between the decode steps of the running streams.
    #[arg(long, default_value_t = 256)]
    prefill_chunk: usize,
    /// Positions per sequence, prompt and answer [default: the model's context].
    #[arg(long)]
    max_context: Option<usize>,
    /// Clients must send `Authorization: Bearer <KEY>` (every route but /health).
    #[arg(long, env = "MOE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// The name clients give as `model` [default: the --model argument].
    #[arg(long)]
    served_model_name: Option<String>,
    /// Where no energy sensor exists, /metrics adds an ESTIMATE: CPU time x this many watts
    /// per busy core, labelled `measured="false"`.
    #[arg(long)]
    estimate_watts_per_core: Option<f64>,
}

pub fn run(args: &ServeArgs) -> Result<()> {
    let limits = Limits::current();
    bounds::at_most(
        "--max-batch",
        args.max_batch,
        limits.max_batch,
        "Limits::max_batch",
    )?;
    bounds::at_most(
        "--max-queue",
        args.max_queue,
        1 << 20,
        "a bound on waiting requests",
    )?;
    bounds::at_most(
        "--prefill-chunk",
        args.prefill_chunk,
        1 << 20,
        "a bound on one step",
    )?;
    if args.api_key.as_deref() == Some("") {
        bail!("--api-key is empty: give a key, or leave the flag out for no key");
    }
    let (model, dir) = args.common.load()?;
    let context = model.config().max_position_embeddings;
    if let Some(n) = args.max_context {
        bounds::at_most(
            "--max-context",
            n,
            context,
            "the model's max_position_embeddings",
        )?;
    }
    let positions = args.max_context.unwrap_or(context);
    bounds::caches(&model, args.max_batch, positions)
        .context("lower --max-batch or --max-context")?;
    let tokenizer = Tokenizer::load(&dir)?;
    let energy = EnergyArgs {
        idle_seconds: 0.0,
        estimate_watts_per_core: args.estimate_watts_per_core,
    };
    let meter = energy.meter(!model.device().is_cpu())?;
    let opts = ServeOptions {
        model_id: args
            .served_model_name
            .clone()
            .unwrap_or_else(|| args.common.model.name()),
        api_key: args.api_key.clone(),
        max_batch: args.max_batch,
        max_queue: args.max_queue,
        prefill_chunk: args.prefill_chunk,
        max_context: args.max_context,
        energy: Some(meter),
        ..ServeOptions::default()
    };
    let model_id = opts.model_id.clone();
    let server = Server::new(Arc::new(model), Arc::new(tokenizer), &dir, opts)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let addr = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        let bound: SocketAddr = listener.local_addr()?;
        // The first line of stdout, for scripts that start the server on port 0.
        println!("listening on http://{bound}");
        note!("serving `{model_id}` from {}; Ctrl-C stops", dir.display());
        server.serve(listener, stopped()).await.context("serving")
    })
}

/// Ctrl-C or SIGTERM (what service managers and container runtimes send): the server stops
/// taking connections and finishes the requests in flight.
async fn stopped() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let term = async {
        match term.as_mut() {
            Some(term) => {
                term.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
