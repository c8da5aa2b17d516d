//! The `moe` command line used as an attacker or a careless new user would (issue 23): a
//! reader of stdout that goes away, counts at the edge of their type, random weights larger
//! than the machine, empty and binary input. Each run is the built binary under an address-space
//! limit and a deadline; each must end in one line on stderr (none for a closed pipe), a
//! non-zero exit and no panic.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Address space one run may map. The bundled model's runs need well under 1 GiB (threads,
/// mimalloc's reservations and the mapped weights included); an allocation sized by a flag
/// that was not checked fails against this limit at once, as an abort these tests catch,
/// instead of growing until the kernel kills something.
const ADDRESS_SPACE: u64 = 4 << 30;

/// Every run here takes a second or less on the bundled model; one still running after this is
/// a hang.
const DEADLINE: Duration = Duration::from_secs(20);

/// The status `moe` ends with after stdout was closed under it (128 + SIGPIPE, as a shell
/// reports).
const BROKEN_PIPE: i32 = 141;

/// What the run's stdout is connected to.
#[derive(Clone, Copy, PartialEq)]
enum Reader {
    /// Read to the end.
    Whole,
    /// Closed before the command starts: every write fails.
    Gone,
    /// One byte read, then closed, as `| head -c 1` does.
    OneByte,
}

struct Run {
    args: Vec<String>,
    status: ExitStatus,
    stderr: String,
}

/// Runs `moe args` with `stdin` on its standard input and `reader` on its output, under
/// [`ADDRESS_SPACE`]; fails the test if it is still running after [`DEADLINE`].
///
/// The limit is set with `setrlimit(RLIMIT_AS)` between fork and exec: no outside tool
/// (`prlimit` or a shell's `ulimit -v`) has to be installed, and it binds only the child.
fn moe_with(args: &[&str], stdin: &[u8], reader: Reader) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_moe"));
    command
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped());
    match reader {
        // The read end is closed before the child exists: its first write fails, whatever
        // the timing.
        Reader::Gone => {
            let (read, write) = std::io::pipe().unwrap();
            drop(read);
            command.stdout(write);
        }
        Reader::Whole | Reader::OneByte => {
            command.stdout(Stdio::piped());
        }
    }
    // SAFETY: the hook runs in the forked child before exec; it calls only setrlimit, which is
    // async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: ADDRESS_SPACE as libc::rlim_t,
                rlim_max: ADDRESS_SPACE as libc::rlim_t,
            };
            match libc::setrlimit(libc::RLIMIT_AS, &limit) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        });
    }
    let mut child = command.spawn().expect("the moe binary runs");
    // A child that ends before reading all of stdin closes it: that write error is expected.
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let output = child.stdout.take();
    let drain = std::thread::spawn(move || {
        let Some(mut output) = output else { return };
        match reader {
            Reader::OneByte => {
                let _ = output.read_exact(&mut [0u8]);
            }
            _ => {
                let _ = output.read_to_end(&mut Vec::new());
            }
        }
    });
    let mut errors = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = errors.read_to_end(&mut text);
        String::from_utf8_lossy(&text).into_owned()
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("moe {args:?} still ran after {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    feeder.join().unwrap();
    drain.join().unwrap();
    Run {
        args: args.iter().map(|a| a.to_string()).collect(),
        status,
        stderr: stderr.join().unwrap(),
    }
}

fn moe(args: &[&str]) -> Run {
    moe_with(args, b"", Reader::Whole)
}

impl Run {
    /// Ended by itself (an abort or a kill by the kernel ends by a signal) and without a panic.
    fn ended_by_itself(&self) {
        let Run {
            args,
            status,
            stderr,
        } = self;
        assert!(
            !stderr.contains("panicked"),
            "moe {args:?} panicked: {stderr}"
        );
        assert!(
            status.code().is_some(),
            "moe {args:?} ended by a signal ({status}): {stderr}"
        );
    }

    /// Failed with one line on stderr, `error: ...`, holding `expected`.
    fn fails_saying(&self, expected: &str) {
        self.ended_by_itself();
        let Run {
            args,
            status,
            stderr,
        } = self;
        assert!(!status.success(), "moe {args:?} succeeded: {stderr}");
        assert_eq!(
            stderr.lines().count(),
            1,
            "moe {args:?}: not one line: {stderr}"
        );
        assert!(
            stderr.starts_with("error: ") && stderr.contains(expected),
            "moe {args:?}: expected `{expected}` in: {stderr}"
        );
    }

    /// Ended quietly, with the closed pipe's status, on stdout's reader going away; `notes`
    /// says whether progress notes on stderr are expected (explore's), else it is empty.
    fn ends_quietly(&self, notes: bool) {
        self.ended_by_itself();
        let Run {
            args,
            status,
            stderr,
        } = self;
        assert_eq!(status.code(), Some(BROKEN_PIPE), "moe {args:?}: {stderr}");
        if !notes {
            assert_eq!(stderr, "", "moe {args:?} wrote to stderr");
        }
        assert!(!stderr.contains("error"), "moe {args:?}: {stderr}");
    }
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn mkfifo(path: &Path) {
    let ok = Command::new("mkfifo").arg(path).status().unwrap().success();
    assert!(ok, "mkfifo {}", path.display());
}

/// A conversation file for `moe prompt`.
fn messages(dir: &Path) -> PathBuf {
    let file = dir.join("messages.json");
    std::fs::write(&file, r#"[{"role": "user", "content": "Who goes there?"}]"#).unwrap();
    file
}

const MAX: &str = "18446744073709551615";

// ---- Stdout closed under the command ----

#[test]
fn a_closed_stdout_ends_every_command_quietly() {
    let dir = tempdir();
    let messages = messages(dir.path());
    let explore_out = dir.path().join("explore");
    let cases: &[&[&str]] = &[
        &["generate", "--prompt", "ROMEO:", "--max-new-tokens", "50"],
        &["generate", "--tokens", "1,2,3", "--max-new-tokens", "4"],
        &[
            "generate",
            "--prompt",
            "ROMEO:",
            "--max-new-tokens",
            "4",
            "--json",
        ],
        &["tokenize", "--text", "To be, or not to be"],
        &["tokenize", "--decode", "1,2,3"],
        &["prompt", "--messages", path(&messages)],
        &["inspect"],
        &[
            "bench",
            "--prompt-len",
            "4",
            "--gen-len",
            "2",
            "--repeats",
            "1",
            "--idle-seconds",
            "0",
        ],
    ];
    for args in cases {
        moe_with(args, b"", Reader::Gone).ends_quietly(false);
    }
    let chat = ["chat", "--max-new-tokens", "4"];
    moe_with(&chat, b"Hail!\n", Reader::Gone).ends_quietly(false);
    let explore = [
        "explore",
        "--out",
        path(&explore_out),
        "--experts",
        "1",
        "--formats",
        "f32",
        "--batches",
        "1",
        "--prompt-len",
        "4",
        "--gen-len",
        "2",
        "--repeats",
        "1",
        "--quality-tokens",
        "64",
        "--idle-seconds",
        "0",
    ];
    // Its progress notes come first; the table on stdout finds the reader gone.
    moe_with(&explore, b"", Reader::Gone).ends_quietly(true);
    let compare_out = dir.path().join("compare");
    // One model on a short text: the check is the closed stdout, not the measurement.
    let text = dir.path().join("held_out.txt");
    std::fs::write(&text, "PROSPERO:\nNow does my project gather to a head.\n").unwrap();
    let compare = [
        "compare",
        "--model",
        moe_runtime::BUNDLED_MODEL,
        "--text",
        path(&text),
        "--out",
        path(&compare_out),
        "--formats",
        "bf16",
        "--prompt-len",
        "4",
        "--gen-len",
        "2",
        "--repeats",
        "1",
        "--idle-seconds",
        "0",
    ];
    moe_with(&compare, b"", Reader::Gone).ends_quietly(true);
}

#[test]
fn a_reader_that_takes_one_byte_stops_generation() {
    // `| head -c 1`: the reader leaves while tokens are still coming; generation stops at the
    // next write instead of computing the rest of a long budget for nobody.
    let generate = ["generate", "--prompt", "ROMEO:", "--max-new-tokens", "1000"];
    moe_with(&generate, b"", Reader::OneByte).ends_quietly(false);
    let chat = ["chat", "--max-new-tokens", "1000"];
    moe_with(&chat, b"Hail!\nWho goes there?\n", Reader::OneByte).ends_quietly(false);
}

// ---- Counts from the command line ----

#[test]
fn counts_at_the_edge_of_their_type_are_refused_before_any_work() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["generate", "--prompt", "ROMEO:", "--max-new-tokens", MAX],
            "ask for at most",
        ),
        (
            &["generate", "--prompt", "ROMEO:", "--max-new-tokens", "0"],
            "--max-new-tokens 0",
        ),
        (
            &["generate", "--tokens", "1,2", "--max-new-tokens", "1023"],
            "context of 1024",
        ),
        (&["chat", "--max-new-tokens", MAX], "--max-new-tokens"),
        (&["chat", "--max-new-tokens", "0"], "--max-new-tokens 0"),
        (
            &["bench", "--prompt-len", MAX, "--gen-len", "2"],
            "--prompt-len",
        ),
        (
            &["bench", "--prompt-len", "1", "--gen-len", MAX],
            "--gen-len",
        ),
        (
            &[
                "bench",
                "--prompt-len",
                "18446744073709551614",
                "--gen-len",
                "1",
            ],
            "context of 1024",
        ),
        (&["bench", "--prompt-len", "0"], "--prompt-len 0"),
        (&["bench", "--repeats", MAX], "--repeats"),
        (&["bench", "--repeats", "0"], "--repeats 0"),
        (&["bench", "--batch", "100000"], "--batch 100000"),
        (&["bench", "--batch", "1,0"], "--batch 0"),
        (&["bench", "--batch", MAX], "Limits::max_batch"),
        (
            &["generate", "--prompt", "hi", "--check-weights", "maybe"],
            "--check-weights \"maybe\" is not one of auto, on or off",
        ),
        (
            &["generate", "--prompt", "hi", "--threads", "10000"],
            "--threads 10000",
        ),
        (
            &["generate", "--prompt", "hi", "--threads", "0"],
            "--threads 0",
        ),
        (
            &["generate", "--prompt", "hi", "--experts-per-token", MAX],
            "--experts-per-token",
        ),
        (
            &["explore", "--out", "/tmp/unused", "--repeats", MAX],
            "--repeats",
        ),
        (
            &["explore", "--out", "/tmp/unused", "--rounds", MAX],
            "--rounds",
        ),
        (
            &["explore", "--out", "/tmp/unused", "--batches", "1,100000"],
            "--batches 100000",
        ),
        (
            &["explore", "--out", "/tmp/unused", "--prompt-len", MAX],
            "--prompt-len",
        ),
        (
            &["compare", "--out", "/tmp/unused", "--repeats", MAX],
            "--repeats",
        ),
        (
            &["compare", "--out", "/tmp/unused", "--rounds", MAX],
            "--rounds",
        ),
        (
            &["compare", "--out", "/tmp/unused", "--batch", "100000"],
            "--batch 100000",
        ),
        (
            &["compare", "--out", "/tmp/unused", "--gen-len", MAX],
            "--gen-len",
        ),
    ];
    for (args, expected) in cases {
        moe(args).fails_saying(expected);
    }
}

#[test]
fn a_number_clap_cannot_read_is_one_line_too() {
    let run = moe(&["generate", "--max-new-tokens", "18446744073709551616"]);
    run.fails_saying("--max-new-tokens");
    assert_eq!(run.status.code(), Some(2));
}

// ---- Random weights larger than the machine ----

#[test]
fn random_weights_larger_than_memory_are_refused_before_any_is_made() {
    let dir = tempdir();
    let config = dir.path().join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(moe_runtime::BUNDLED_MODEL).join("config.json"))
            .unwrap(),
    )
    .unwrap();
    // A Qwen3-MoE of about 118B parameters: 441 GiB in f32.
    for (field, value) in [
        ("hidden_size", 4096),
        ("moe_intermediate_size", 1536),
        ("num_local_experts", 128),
        ("num_hidden_layers", 48),
        ("num_attention_heads", 32),
        ("num_key_value_heads", 4),
        ("head_dim", 128),
        ("vocab_size", 151936),
    ] {
        cfg[field] = value.into();
    }
    std::fs::write(&config, cfg.to_string()).unwrap();
    match moe_runtime::limits::available_memory() {
        Some(available) if available < 400 << 30 => {}
        _ => {
            eprintln!("skipped: more than 400 GiB available, or not known");
            return;
        }
    }
    let run = moe(&["bench", "--random-weights", "--config", path(&config)]);
    run.fails_saying("GiB of memory is available");
    assert!(run.stderr.contains("random weights"), "{}", run.stderr);

    let fifo = dir.path().join("fifo.json");
    mkfifo(&fifo);
    moe(&["bench", "--random-weights", "--config", path(&fifo)]).fails_saying("not a regular file");
}

// ---- Empty, binary and unwritable ----

#[test]
fn empty_binary_and_unwritable_inputs_are_named() {
    let dir = tempdir();
    let binary = dir.path().join("binary.txt");
    std::fs::write(&binary, b"ab\xff\xfe").unwrap();
    let fifo = dir.path().join("fifo.json");
    mkfifo(&fifo);
    // A folder under a regular file can never be made.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let unwritable = file.join("explore");
    let cases: &[(&[&str], &str)] = &[
        (
            &["generate", "--model", "", "--prompt", "hi"],
            "--model is empty",
        ),
        (&["inspect", "--model", ""], "--model is empty"),
        (&["generate", "--prompt", ""], "--prompt is empty"),
        (&["generate", "--prompt", "", "--chat"], "--prompt is empty"),
        (&["generate", "--tokens", ""], "--tokens lists no token ids"),
        (
            &["tokenize", "--text-file", path(&binary)],
            "is not UTF-8 text",
        ),
        (&["prompt", "--messages", path(&fifo)], "not a regular file"),
        (&["explore", "--out", path(&unwritable)], "--out"),
        (&["generate", "--no-such-flag"], "--no-such-flag"),
    ];
    for (args, expected) in cases {
        moe(args).fails_saying(expected);
    }
    // Before the sweep: nothing was loaded or measured, so nothing was noted on the way.
    assert!(!unwritable.exists());
}

#[test]
fn binary_data_on_chats_stdin_names_stdin_and_the_line() {
    let chat = ["chat", "--max-new-tokens", "4"];
    moe_with(&chat, b"\xff\xfeHail\n", Reader::Whole).fails_saying("stdin line 1 is not UTF-8");
    // An empty line is no message: nothing is answered before line 2.
    moe_with(&chat, b"\nHa\xffil\n", Reader::Whole).fails_saying("stdin line 2 is not UTF-8");
}
