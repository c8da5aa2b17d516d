//! Continuous batching: one thread owns the model and runs it in steps. At each step it admits
//! waiting requests into the running batch, gives every running sequence its next input (one
//! token for a sequence that is decoding, a chunk of the prompt for one that is not), runs all
//! of them in one [`Model::forward_sequences`] pass, samples where a sequence needs a token,
//! and retires the sequences that finished or whose client went away. A batch reads each
//! chosen expert once for all the tokens that chose it, which is where a sparse model earns
//! its efficiency under load; chunked prompts keep running streams flowing while a long prompt
//! is read.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use super::metrics::Metrics;
use crate::error::{Error, Result};
use crate::generate::{check_logits, Flow, StopReason};
use crate::layers::{shared_start, Cache, Model};
use crate::reasoning::{Part, ToolCall};
use crate::sampling::{Sampler, SamplingConfig};
use crate::text::Decoder;
use crate::tokenizer::Tokenizer;

/// How the scheduler batches.
#[derive(Debug, Clone)]
pub struct BatchOptions {
    /// Sequences in the running batch at most.
    pub max_batch: usize,
    /// Requests waiting for a place in the batch at most; more are refused (busy).
    pub max_queue: usize,
    /// Prompt tokens read per step at most, over all the sequences prefilling: a long prompt
    /// is read in chunks between the decode steps of the others.
    pub prefill_chunk: usize,
    /// Positions per sequence, prompt and answer (at most the model's context).
    pub context: usize,
}

/// One request: a prompt, and how to continue it.
#[derive(Debug)]
pub struct Job {
    pub prompt: Vec<u32>,
    /// New tokens at most; the caller checks that the prompt and these fit the context.
    pub max_new_tokens: usize,
    pub sampling: SamplingConfig,
    /// Stop ids besides the model's own.
    pub stop_tokens: Vec<u32>,
    /// Leave out the model's own stop ids (its end of sequence): generate to the budget.
    pub ignore_eos: bool,
    /// The continuation as raw text (a text completion), not read for reasoning or tool calls.
    pub raw: bool,
    /// When the request arrived: its time to first token counts the queue.
    pub arrived: Instant,
    pub stop_strings: Vec<String>,
    /// Where the answer goes, piece by piece. A closed receiver cancels the request: its
    /// place in the batch is freed at the next step.
    pub events: UnboundedSender<Event>,
}

/// What the scheduler tells a request's receiver.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// New text of the answer, the reasoning or a tool call.
    Text(Part, String),
    /// The end, with what the request cost.
    Done(Finished),
    /// The model failed on this request; nothing follows.
    Failed(String),
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub reason: StopReason,
    pub prompt_tokens: usize,
    /// Of the prompt's tokens, those an earlier request's cache held (not computed again).
    pub cached_tokens: usize,
    pub completion_tokens: usize,
    pub tool_calls: Vec<ToolCall>,
    /// From the request's arrival (queue included) to the first new token.
    pub time_to_first_token_secs: f64,
}

impl Finished {
    /// OpenAI's finish reason, which the metrics count requests under too: `tool_calls` when
    /// the answer asks for any, `stop` (an end-of-sequence id or a stop string), `length` (the
    /// token budget or the context).
    pub fn finish_reason(&self) -> &'static str {
        match self.reason {
            _ if !self.tool_calls.is_empty() => "tool_calls",
            StopReason::StopToken | StopReason::StopString | StopReason::Callback => "stop",
            StopReason::MaxTokens | StopReason::ContextFull => "length",
        }
    }
}

/// The scheduler's thread and the way into its queue. Dropping it closes the queue: the thread
/// finishes what it holds and ends.
pub struct Scheduler {
    queue: Option<mpsc::SyncSender<Job>>,
    waiting: Arc<AtomicUsize>,
    max_queue: usize,
    thread: Option<JoinHandle<()>>,
}

/// Why a job was not queued; the job comes back.
#[derive(Debug)]
pub enum Refused {
    /// The queue is full: try again later.
    Busy(Box<Job>),
    /// The scheduler's thread has ended (it failed): nothing will run.
    Stopped(Box<Job>),
}

impl Scheduler {
    /// Starts the scheduler's thread over `model`, ending every sequence at any of
    /// `stop_tokens` (the checkpoint's end-of-sequence ids).
    pub fn start(
        model: Arc<Model>,
        tokenizer: Arc<Tokenizer>,
        stop_tokens: Vec<u32>,
        opts: BatchOptions,
        metrics: Arc<Metrics>,
    ) -> Result<Scheduler> {
        if opts.max_batch == 0 || opts.prefill_chunk == 0 || opts.context == 0 {
            return Err(Error::Input(format!(
                "a batch of {}, prompt chunks of {} tokens and a context of {} each must be at \
                 least 1",
                opts.max_batch, opts.prefill_chunk, opts.context
            )));
        }
        let max_queue = opts.max_queue;
        let (queue, jobs) = mpsc::sync_channel(max_queue);
        let waiting = Arc::new(AtomicUsize::new(0));
        let engine = Engine {
            model,
            tokenizer,
            stop_tokens,
            opts,
            metrics,
            waiting: waiting.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("moe-scheduler".into())
            .spawn(move || engine.run(jobs))
            .map_err(|e| Error::Input(format!("starting the scheduler's thread: {e}")))?;
        Ok(Scheduler {
            queue: Some(queue),
            waiting,
            max_queue,
            thread: Some(thread),
        })
    }

    /// Queues `job`; refused when the queue is full or the scheduler has stopped.
    pub fn submit(&self, job: Job) -> std::result::Result<(), Refused> {
        let queue = self
            .queue
            .as_ref()
            .expect("the queue lives as long as the scheduler");
        self.waiting.fetch_add(1, Ordering::SeqCst);
        queue.try_send(job).map_err(|e| {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            match e {
                mpsc::TrySendError::Full(job) => Refused::Busy(Box::new(job)),
                mpsc::TrySendError::Disconnected(job) => Refused::Stopped(Box::new(job)),
            }
        })
    }

    /// Whether the scheduler's thread still runs (it ends only by failing, or when the
    /// scheduler is dropped).
    pub fn is_alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Whether the queue holds as many requests as it may: a request submitted now would be
    /// refused unless one leaves it first.
    pub fn is_full(&self) -> bool {
        self.waiting() >= self.max_queue
    }

    /// Requests queued and not yet in the batch.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the scheduler's thread owns.
struct Engine {
    model: Arc<Model>,
    tokenizer: Arc<Tokenizer>,
    stop_tokens: Vec<u32>,
    opts: BatchOptions,
    metrics: Arc<Metrics>,
    waiting: Arc<AtomicUsize>,
}

/// A sequence in the running batch.
struct Running<'t> {
    prompt: Vec<u32>,
    /// The prompt and every new token, for the repetition penalty.
    history: Vec<u32>,
    /// This step's input: a chunk of the prompt, the last new token, or nothing.
    input: Vec<u32>,
    cache: Cache,
    sampler: Sampler,
    decoder: Decoder<'t>,
    events: UnboundedSender<Event>,
    max_new_tokens: usize,
    generated: usize,
    arrived: Instant,
    first_token_secs: Option<f64>,
    /// Prompt tokens found in the cache at admission (not computed again).
    cached: usize,
}

/// A cache of a retired sequence, and the tokens it holds.
struct Pooled {
    cache: Cache,
    tokens: Vec<u32>,
}

/// Why a sequence leaves the batch.
enum Exit {
    Finished(StopReason),
    Failed(String),
    /// Its client went away.
    Cancelled,
}

impl Engine {
    fn run(self, jobs: mpsc::Receiver<Job>) {
        let tokenizer = self.tokenizer.clone();
        let mut running: Vec<Running> = Vec::new();
        let mut pool: Vec<Pooled> = Vec::new();
        loop {
            // Admit: wait for work when there is none, else take what is queued.
            while running.len() < self.opts.max_batch {
                let job = if running.is_empty() {
                    match jobs.recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    }
                } else {
                    match jobs.try_recv() {
                        Ok(job) => job,
                        Err(_) => break,
                    }
                };
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                match self.admit(job, &mut pool, &tokenizer) {
                    Ok(seq) => running.push(seq),
                    Err((events, message)) => {
                        self.metrics.finished("error");
                        let _ = events.send(Event::Failed(message));
                    }
                }
            }
            self.metrics
                .set_load(self.waiting.load(Ordering::SeqCst), running.len());
            let exits = self.step(&mut running);
            // Retire, last first so that the indices hold.
            for (i, exit) in exits.into_iter().enumerate().rev() {
                let Some(exit) = exit else { continue };
                let mut seq = running.remove(i);
                let failed = matches!(exit, Exit::Failed(_));
                let outcome = match exit {
                    Exit::Finished(reason) => {
                        let mut send = |part, text: &str| send(&seq.events, part, text);
                        let (_, _, tool_calls) = seq.decoder.finish(&mut send);
                        let finished = Finished {
                            reason,
                            prompt_tokens: seq.prompt.len(),
                            cached_tokens: seq.cached,
                            completion_tokens: seq.generated,
                            tool_calls,
                            time_to_first_token_secs: seq.first_token_secs.unwrap_or(0.0),
                        };
                        let label = finished.finish_reason();
                        let _ = seq.events.send(Event::Done(finished));
                        label
                    }
                    Exit::Failed(message) => {
                        let _ = seq.events.send(Event::Failed(message));
                        "error"
                    }
                    Exit::Cancelled => "cancelled",
                };
                self.metrics.finished(outcome);
                // The cache holds the prompt and every new token but the last: kept for a
                // later request that begins the same way (a chat's next turn). After a failed
                // step it is not trusted.
                let mut tokens = seq.history;
                if failed {
                    seq.cache.reset();
                }
                tokens.truncate(seq.cache.position());
                pool.push(Pooled {
                    cache: seq.cache,
                    tokens,
                });
            }
            self.metrics
                .set_load(self.waiting.load(Ordering::SeqCst), running.len());
        }
    }

    /// A job as a sequence of the batch, on the pooled cache that holds the longest start of
    /// its prompt (or a new one); on failure, its receiver and why.
    fn admit<'t>(
        &self,
        job: Job,
        pool: &mut Vec<Pooled>,
        tokenizer: &'t Tokenizer,
    ) -> std::result::Result<Running<'t>, (UnboundedSender<Event>, String)> {
        let model_stops = if job.ignore_eos {
            &[][..]
        } else {
            &self.stop_tokens[..]
        };
        let stops = [model_stops, &job.stop_tokens].concat();
        let made = Sampler::new(job.sampling).and_then(|sampler| {
            if job.prompt.is_empty() || job.prompt.len() >= self.opts.context {
                return Err(Error::Input(format!(
                    "a prompt of {} tokens leaves no room in a context of {}",
                    job.prompt.len(),
                    self.opts.context
                )));
            }
            let vocab = self.model.config().vocab_size;
            if let Some(id) = job.prompt.iter().find(|&&id| id as usize >= vocab) {
                return Err(Error::Input(format!(
                    "the prompt holds token id {id}, past the model's vocabulary of {vocab}"
                )));
            }
            let decoder = match job.raw {
                true => Decoder::raw(tokenizer, &stops, &job.stop_strings)?,
                false => Decoder::new(tokenizer, &job.prompt, &stops, &job.stop_strings)?,
            };
            Ok((sampler, decoder))
        });
        let (sampler, decoder) = match made {
            Ok(parts) => parts,
            Err(e) => return Err((job.events, e.to_string())),
        };
        let Pooled { mut cache, tokens } = self.cache_for(&job.prompt, pool);
        let cached = match cache.resume(&tokens, &job.prompt) {
            Ok(kept) => kept,
            Err(e) => return Err((job.events, e.to_string())),
        };
        Ok(Running {
            history: job.prompt.clone(),
            prompt: job.prompt,
            input: Vec::new(),
            cache,
            sampler,
            decoder,
            events: job.events,
            max_new_tokens: job.max_new_tokens,
            generated: 0,
            arrived: job.arrived,
            first_token_secs: None,
            cached,
        })
    }

    /// The pooled cache whose tokens share the longest start with `prompt`, taken out of the
    /// pool; a new cache when the pool is empty.
    fn cache_for(&self, prompt: &[u32], pool: &mut Vec<Pooled>) -> Pooled {
        let best = (0..pool.len()).max_by_key(|&i| shared_start(&pool[i].tokens, prompt));
        match best {
            Some(i) => pool.swap_remove(i),
            None => Pooled {
                cache: self.model.new_cache_for(self.opts.context),
                tokens: Vec::new(),
            },
        }
    }

    /// One pass over the batch; returns, per sequence, whether and why it leaves.
    fn step(&self, running: &mut [Running]) -> Vec<Option<Exit>> {
        let mut exits: Vec<Option<Exit>> = running
            .iter()
            .map(|s| s.events.is_closed().then_some(Exit::Cancelled))
            .collect();
        // Inputs: decoding sequences their last token; prefilling ones, in the order they
        // came, a chunk of what is left of their prompt within the step's prompt budget.
        let mut budget = self.opts.prefill_chunk;
        let (mut prefill, mut decode) = (0, 0);
        for (seq, exit) in running.iter_mut().zip(&exits) {
            seq.input.clear();
            if exit.is_some() {
                continue;
            }
            let fed = seq.cache.position();
            if fed < seq.prompt.len() {
                let n = budget.min(seq.prompt.len() - fed);
                seq.input.extend_from_slice(&seq.prompt[fed..fed + n]);
                budget -= n;
                prefill += n;
            } else {
                seq.input
                    .push(*seq.history.last().expect("a sequence has its prompt"));
                decode += 1;
            }
        }
        if prefill + decode == 0 {
            return exits;
        }
        let start = Instant::now();
        let mut seqs: Vec<(&[u32], &mut Cache)> = running
            .iter_mut()
            .filter(|s| !s.input.is_empty())
            .map(|s| (s.input.as_slice(), &mut s.cache))
            .collect();
        let logits = self
            .model
            .forward_sequences(&mut seqs)
            .and_then(|l| Ok(l.to_vec2::<f32>()?));
        let secs = start.elapsed().as_secs_f64();
        if logits.is_ok() {
            self.metrics.step(seqs.len(), prefill, decode, secs);
        }
        let logits = match logits {
            Ok(logits) => logits,
            Err(e) => {
                let message = format!("the model failed on this step's batch: {e}");
                for (seq, exit) in running.iter().zip(exits.iter_mut()) {
                    if !seq.input.is_empty() {
                        *exit = Some(Exit::Failed(message.clone()));
                    }
                }
                return exits;
            }
        };
        let mut rows = logits.iter();
        for (seq, exit) in running.iter_mut().zip(exits.iter_mut()) {
            if seq.input.is_empty() {
                continue;
            }
            let row = rows.next().expect("one row of logits per sequence fed");
            // A prompt not yet read through samples nothing.
            if seq.cache.position() < seq.prompt.len() {
                continue;
            }
            *exit = seq.next_token(row, &self.model, self.opts.context, &self.metrics);
        }
        exits
    }
}

impl Running<'_> {
    /// Samples from `logits` (this sequence's last row), streams the text, and says whether
    /// the sequence ends here.
    fn next_token(
        &mut self,
        logits: &[f32],
        model: &Model,
        context: usize,
        metrics: &Metrics,
    ) -> Option<Exit> {
        let (step, position) = (self.generated, self.cache.position() - 1);
        if let Err(e) = check_logits(model, logits, &self.history, step, position) {
            return Some(Exit::Failed(e.to_string()));
        }
        let next = self.sampler.sample(logits, &self.history);
        self.history.push(next);
        self.generated += 1;
        if self.first_token_secs.is_none() {
            let ttft = self.arrived.elapsed().as_secs_f64();
            self.first_token_secs = Some(ttft);
            metrics.first_token(ttft);
        }
        let events = &self.events;
        let mut on_text = |part, text: &str| send(events, part, text);
        let flow = match self.decoder.push(next, &mut on_text) {
            Ok(flow) => flow,
            Err(e) => return Some(Exit::Failed(e.to_string())),
        };
        if self.decoder.stop_tokens().contains(&next) {
            Some(Exit::Finished(StopReason::StopToken))
        } else if self.decoder.stopped_by_string() {
            Some(Exit::Finished(StopReason::StopString))
        } else if flow == Flow::Stop {
            Some(Exit::Cancelled)
        } else if self.generated >= self.max_new_tokens {
            Some(Exit::Finished(StopReason::MaxTokens))
        } else if self.cache.position() + 1 > context {
            // The new token has no position left to be fed at.
            Some(Exit::Finished(StopReason::ContextFull))
        } else {
            None
        }
    }
}

/// Sends a piece of text; a receiver that is gone stops the sequence.
fn send(events: &UnboundedSender<Event>, part: Part, text: &str) -> Flow {
    match events.send(Event::Text(part, text.to_string())) {
        Ok(()) => Flow::Continue,
        Err(_) => Flow::Stop,
    }
}
