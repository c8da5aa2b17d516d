#!/usr/bin/env python3
"""`moe serve` checked through the official `openai` Python client.

    pip install -r tools/requirements-serve.txt
    python tools/test_serve_openai.py [--moe target/release/moe] [--model DIR]

Starts the server itself on a free port (port 0; the address is read from its first line of
stdout), waits for /health, runs the checks below, prints one line per check and a summary, and
stops every server it started, also on failure or Ctrl-C. Exits 1 when any check fails.

Servers started:
  main   `moe serve --port 0`                      (the bundled model unless --model)
  auth   ... --api-key K --served-model-name N     (401s, /health open, a renamed model)
  busy   ... --max-batch 1 --max-queue 1           (503 + Retry-After when the queue is full)

More server arguments for every server: --server-arg=--dtype --server-arg=bf16 (the `=` lets a
value start with `--`). Needs only the standard library and `openai` (no pytest). VERBOSE=1
prints the traceback of a failed check.
"""

import argparse
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse

try:
    import openai
    from openai import OpenAI
except ImportError:
    sys.exit("the `openai` package is missing: pip install -r tools/requirements-serve.txt")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Tokens per answer in the comparisons; the bundled model's answers mostly end (at
# <|im_end|>) before this, which is fine: equal answers must end equally.
MAX_TOKENS = 48
# The folder name of the bundled model is its id; --model DIR makes it DIR's name.
DEFAULT_MODEL_DIR = os.path.join(ROOT, "models", "tiny-shakespeare-moe")

SPEAKERS = ["ROMEO", "JULIET", "HAMLET", "OPHELIA", "MACBETH", "PORTIA", "OTHELLO", "VIOLA"]
ASKS = [
    "what news from Verona?",
    "speak, I pray thee, of thy father's ghost.",
    "wherefore dost thou weep upon this night? Tell me, and be brief.",
    "good morrow.",
]


# Sonnet 18 (public domain): the long prompts, read in chunks (the server's --prefill-chunk is
# 256 tokens by default) beside the decode steps of the short ones.
SONNET = (
    "Shall I compare thee to a summer's day? Thou art more lovely and more temperate: "
    "Rough winds do shake the darling buds of May, And summer's lease hath all too short a date; "
    "Sometime too hot the eye of heaven shines, And often is his gold complexion dimm'd; "
    "And every fair from fair sometime declines, By chance or nature's changing course untrimm'd; "
    "But thy eternal summer shall not fade, Nor lose possession of that fair thou ow'st; "
    "Nor shall death brag thou wander'st in his shade, When in eternal lines to time thou grow'st: "
    "So long as men can breathe or eyes can see, So long lives this, and this gives life to thee. "
)


def prompts32():
    """32 distinct chat prompts: most short, four long (about 250 to 600 tokens)."""
    out = []
    for i in range(32):
        speaker = SPEAKERS[i % len(SPEAKERS)]
        ask = ASKS[(i // len(SPEAKERS)) % len(ASKS)]
        text = f"{speaker}, {ask}" + (" " + "Nay, " * (i % 5) if i % 3 == 0 else "")
        if i % 8 == 5:
            text = SONNET * (1 + i // 8) + text
        out.append(text)
    assert len(set(out)) == 32
    return out


# --------------------------------------------------------------------------------------------
# The server process


class Server:
    """`moe serve --port 0 ARGS`, stopped by stop() (SIGINT, then SIGKILL after a grace)."""

    live = []  # every server started, for the cleanup at exit

    def __init__(self, moe, args, name):
        self.name = name
        self.log = tempfile.TemporaryFile()
        env = dict(os.environ)
        env.pop("MOE_API_KEY", None)  # clap reads --api-key from it: a stray one would 401 all
        cmd = [moe, "serve", "--port", "0", *args]
        self.cmd = cmd
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=self.log, stdin=subprocess.DEVNULL, env=env
        )
        Server.live.append(self)
        line = self._first_line(timeout=60)
        m = re.fullmatch(r"listening on (http://\S+)", line.strip())
        if not m:
            self.stop()
            raise RuntimeError(
                f"{name}: the first stdout line is {line!r}, not `listening on http://...`\n"
                + self.log_tail()
            )
        self.base = m.group(1)
        u = urllib.parse.urlsplit(self.base)
        self.host, self.port = u.hostname, u.port
        # Anything more on stdout is drained, so that the server never blocks on the pipe.
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()
        self._wait_health(timeout=30)

    def _first_line(self, timeout):
        box = []
        t = threading.Thread(target=lambda: box.append(self.proc.stdout.readline().decode()))
        t.daemon = True
        t.start()
        t.join(timeout)
        if not box:
            self.stop()
            raise RuntimeError(f"{self.name}: no address on stdout in {timeout} s\n" + self.log_tail())
        return box[0]

    def _wait_health(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name}: exited with {self.proc.returncode}\n" + self.log_tail())
            try:
                status, body, _ = raw(self, "GET", "/health", timeout=2)
                if status == 200 and body.strip() == b"ok":
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: /health not ok in {timeout} s\n" + self.log_tail())
            time.sleep(0.05)

    def log_tail(self, n=2000):
        try:
            self.log.seek(0)
            text = self.log.read().decode(errors="replace")
        except (OSError, ValueError):
            return ""
        return f"--- {self.name} stderr (tail) ---\n{text[-n:]}"

    def stop(self, sig=signal.SIGINT, grace=5.0):
        """Stops the server; returns its exit status (None when it had to be killed)."""
        if self.proc.poll() is not None:
            return self.proc.returncode
        try:
            self.proc.send_signal(sig)
            return self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None
        finally:
            if self in Server.live:
                Server.live.remove(self)

    def client(self, api_key="unused", **kw):
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 60)
        return OpenAI(base_url=self.base + "/v1", api_key=api_key, **kw)


def stop_all():
    for s in list(Server.live):
        s.stop(grace=3.0)


def raw(server, method, path, body=None, headers=None, timeout=30):
    """A plain HTTP request: (status, body bytes, headers with lower-case names)."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
    try:
        h = dict(headers or {})
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
            h.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        data = r.read()
        return r.status, data, {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()


def metric(server, name, labels=None, headers=None):
    """The value of one sample in /metrics (0.0 when absent)."""
    status, body, _ = raw(server, "GET", "/metrics", headers=headers)
    assert status == 200, f"/metrics answered {status}"
    want = name
    if labels:
        want += "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
    for line in body.decode().splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == want:
            return float(value)
    return 0.0


# --------------------------------------------------------------------------------------------
# The checks


class Checks:
    def __init__(self):
        self.results = []  # (name, ok, seconds, note)

    def run(self, name, fn, *args):
        t0 = time.monotonic()
        try:
            note = fn(*args)
            ok = True
        except Exception as e:  # noqa: BLE001 - every failure is reported, then the next check
            ok = False
            note = f"{type(e).__name__}: {e}"
            detail = traceback.format_exc()
        dt = time.monotonic() - t0
        self.results.append((name, ok, dt, note))
        mark = "PASS" if ok else "FAIL"
        print(f"{mark} {name} ({dt:.2f} s){' - ' + str(note) if note else ''}", flush=True)
        if not ok and os.environ.get("VERBOSE"):
            print(detail, flush=True)
        return ok


def chat_kwargs(model, content, max_tokens=MAX_TOKENS, **extra):
    return dict(
        model=model,
        messages=[{"role": "user", "content": content}],
        temperature=0,
        max_tokens=max_tokens,
        **extra,
    )


def stream_text(client, kwargs, include_usage=True):
    """Streams one chat request; returns (text, finish_reason, usage, chunks)."""
    text, finish, usage, chunks = [], None, None, 0
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}
    with client.chat.completions.create(stream=True, **kwargs, **extra) as stream:
        for chunk in stream:
            chunks += 1
            if chunk.usage is not None:
                assert chunk.choices == [], "the usage chunk carries no choices"
                usage = chunk.usage
            for choice in chunk.choices:
                if choice.delta.content:
                    text.append(choice.delta.content)
                if choice.finish_reason:
                    finish = choice.finish_reason
    return "".join(text), finish, usage, chunks


def check_usage(usage, max_tokens):
    assert usage is not None, "no usage"
    assert usage.prompt_tokens > 0, usage
    assert 0 < usage.completion_tokens <= max_tokens, usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens, usage


def expect_error(status, exc_type, fn):
    """fn() must raise exc_type with `status` and OpenAI's error body."""
    try:
        fn()
    except exc_type as e:
        assert e.status_code == status, f"status {e.status_code}, expected {status}"
        body = e.body if isinstance(e.body, dict) else {}
        # The client hands over the `error` object itself as `body`.
        for key in ("message", "type"):
            assert key in body, f"error body lacks {key!r}: {e.body!r}"
        return body
    except openai.APIStatusError as e:
        raise AssertionError(f"{type(e).__name__} {e.status_code}, expected {exc_type.__name__} {status}: {e}")
    raise AssertionError(f"no error, expected {exc_type.__name__} {status}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moe", default=os.path.join(ROOT, "target", "release", "moe"), help="the moe binary")
    ap.add_argument("--model", help="a checkpoint folder (default: the bundled model)")
    ap.add_argument("--server-arg", action="append", default=[], help="one more argument for every server (repeatable)")
    opts = ap.parse_args()
    if not os.path.exists(opts.moe):
        sys.exit(f"no binary at {opts.moe}: build it with `cargo build --release`, or pass --moe")

    model_dir = opts.model or DEFAULT_MODEL_DIR
    model_id = os.path.basename(os.path.normpath(model_dir))
    context = json.load(open(os.path.join(model_dir, "config.json")))["max_position_embeddings"]
    base_args = (["--model", opts.model] if opts.model else []) + opts.server_arg

    # SIGTERM (a CI timeout) ends the servers too.
    signal.signal(signal.SIGTERM, lambda *_: (stop_all(), sys.exit(143)))
    t_start = time.monotonic()
    checks = Checks()
    try:
        run_all(checks, opts.moe, base_args, model_id, context)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        checks.results.append(("interrupted", False, 0.0, ""))
    except Exception as e:  # noqa: BLE001 - a server that cannot start fails the run
        print(f"FAIL setup - {type(e).__name__}: {e}", flush=True)
        checks.results.append(("setup", False, 0.0, str(e)))
    finally:
        failed = [r for r in checks.results if not r[1]]
        if failed:
            for s in Server.live:
                print(s.log_tail(), flush=True)
        stop_all()
    n, bad = len(checks.results), len(failed)
    print(
        f"\n{n - bad}/{n} checks passed in {time.monotonic() - t_start:.1f} s"
        + (": failed " + ", ".join(r[0] for r in failed) if failed else ""),
        flush=True,
    )
    return 1 if failed else 0


def run_all(checks, moe, base_args, model_id, context):
    main_server = Server(moe, base_args, "main")
    print(f"main server at {main_server.base} ({' '.join(main_server.cmd)})", flush=True)
    client = main_server.client()
    prompts = prompts32()
    state = {}

    def health():
        status, body, _ = raw(main_server, "GET", "/health")
        assert (status, body.strip()) == (200, b"ok"), (status, body)

    def models_list():
        ids = [m.id for m in client.models.list()]
        assert ids == [model_id], f"models {ids}, expected [{model_id!r}]"
        return f"{ids}"

    def chat_plain():
        kw = chat_kwargs(model_id, prompts[0])
        r = client.chat.completions.create(**kw)
        assert r.object == "chat.completion", r.object
        assert r.model == model_id, r.model
        assert len(r.choices) == 1
        c = r.choices[0]
        assert c.message.role == "assistant"
        assert isinstance(c.message.content, str) and c.message.content, f"empty answer: {c.message!r}"
        assert c.finish_reason in ("stop", "length"), c.finish_reason
        check_usage(r.usage, MAX_TOKENS)
        if c.finish_reason == "length":
            assert r.usage.completion_tokens == MAX_TOKENS, r.usage
        again = client.chat.completions.create(**kw)
        assert again.choices[0].message.content == c.message.content, "greedy is not repeatable"
        state["plain"] = (c.message.content, c.finish_reason, r.usage)
        return f"{r.usage.completion_tokens} tokens, {c.finish_reason}: {c.message.content[:40]!r}..."

    def chat_streamed():
        assert "plain" in state, "needs the non-streamed answer"
        text, finish, usage, chunks = stream_text(client, chat_kwargs(model_id, prompts[0]))
        p_text, p_finish, p_usage = state["plain"]
        assert usage is not None, "no usage chunk with stream_options.include_usage"
        assert text == p_text, f"streamed {text!r} != non-streamed {p_text!r}"
        assert finish == p_finish, (finish, p_finish)
        assert (usage.prompt_tokens, usage.completion_tokens) == (p_usage.prompt_tokens, p_usage.completion_tokens), (usage, p_usage)
        # Without include_usage, no usage chunk.
        _, _, none, _ = stream_text(client, chat_kwargs(model_id, prompts[0], max_tokens=4), include_usage=False)
        assert none is None, f"a usage chunk without include_usage: {none}"
        return f"{chunks} chunks, usage {usage.prompt_tokens}+{usage.completion_tokens}"

    def text_completion():
        kw = dict(model=model_id, prompt="ROMEO:\n", max_tokens=24, temperature=0)
        r = client.completions.create(**kw)
        assert r.object == "text_completion", r.object
        c = r.choices[0]
        assert isinstance(c.text, str) and c.text, f"empty text: {c!r}"
        assert c.finish_reason in ("stop", "length"), c.finish_reason
        check_usage(r.usage, 24)
        streamed = "".join(ch.choices[0].text for ch in client.completions.create(stream=True, **kw) if ch.choices)
        assert streamed == c.text, f"streamed {streamed!r} != {c.text!r}"
        return f"{r.usage.completion_tokens} tokens: {c.text[:40]!r}..."

    def keep_alive_stream():
        # Clients keep connections alive (the openai client pools them). On a reused
        # connection, each chunk after the first must still leave at once: a server socket
        # without TCP_NODELAY holds it (Nagle) until the client's delayed ACK, about 40 ms.
        conn = http.client.HTTPConnection(main_server.host, main_server.port, timeout=30)
        excess, gaps = [], []
        short = [p for p in prompts if len(p) < 120][:8]
        try:
            for i, prompt in enumerate(short):
                ttft0 = metric(main_server, "moe_time_to_first_token_seconds_sum")
                body = json.dumps({**chat_kwargs(model_id, prompt, max_tokens=8), "stream": True}).encode()
                conn.request("POST", "/v1/chat/completions", body=body,
                             headers={"Content-Type": "application/json"})
                r = conn.getresponse()
                assert r.status == 200, r.status
                t_role = t_text = None
                while True:
                    line = r.readline()
                    if not line or line.startswith(b"data: [DONE]"):
                        break
                    if not line.startswith(b"data: {"):
                        continue
                    now = time.monotonic()
                    delta = json.loads(line[6:])["choices"]
                    delta = delta[0].get("delta", {}) if delta else {}
                    if t_role is None and delta.get("role"):
                        t_role = now
                    elif t_text is None and delta.get("content"):
                        t_text = now
                r.read()
                # The server's own time from admission to this request's first token.
                ttft = metric(main_server, "moe_time_to_first_token_seconds_sum") - ttft0
                if i > 0 and t_role is not None and t_text is not None:  # the first: a fresh connection
                    gaps.append(t_text - t_role)
                    excess.append(t_text - t_role - ttft)
        finally:
            conn.close()
        assert gaps, "no stream had both a role chunk and a text chunk"
        gaps.sort()
        excess.sort()
        median, late = gaps[len(gaps) // 2], excess[len(excess) // 2]
        # Held back, a chunk arrives about 40 ms after the one before it, however soon it was
        # made: late is then 40 ms less the server's TTFT (it goes unseen where the TTFT itself
        # is near 40 ms). Sent at once, late is the loopback's and the client's few ms.
        assert late < 0.015, (
            f"on a keep-alive connection the first token arrives {median * 1e3:.0f} ms (median) after "
            f"the role chunk, {late * 1e3:.0f} ms more than the server took to make it: the chunk waits "
            f"for the client's delayed ACK (Nagle); set TCP_NODELAY on accepted sockets"
        )
        return f"role chunk -> first token {median * 1e3:.1f} ms, {late * 1e3:.1f} ms over the server's TTFT"

    def stop_strings():
        base = client.chat.completions.create(**chat_kwargs(model_id, prompts[0])).choices[0].message.content
        # A stop string from the middle of the greedy answer cuts it there, streamed or not.
        cut = base.find("\n") if "\n" in base else len(base) // 2
        stop = base[cut:cut + 2]
        assert stop, f"the answer {base!r} is too short to cut"
        kw = chat_kwargs(model_id, prompts[0], stop=[stop])
        r = client.chat.completions.create(**kw)
        text, finish = r.choices[0].message.content, r.choices[0].finish_reason
        assert text == base[:base.find(stop)], f"stop {stop!r}: {text!r}, expected {base[:base.find(stop)]!r}"
        assert finish == "stop", finish
        s_text, s_finish, _, _ = stream_text(client, kw)
        assert (s_text, s_finish) == (text, finish), f"streamed {s_text!r} {s_finish}, not {text!r} {finish}"
        return f"stop {stop!r} -> {text!r}"

    def sampling_extensions():
        kw = chat_kwargs(
            model_id, prompts[1], max_tokens=16,
            seed=1234,
            extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.2},
        )
        kw["temperature"] = 0.9
        a = client.chat.completions.create(**kw).choices[0].message.content
        b = client.chat.completions.create(**kw).choices[0].message.content
        assert a == b, f"the same seed sampled differently: {a!r} vs {b!r}"
        return f"seed 1234 repeatable: {a[:30]!r}..."

    def concurrent_32():
        reqs = [chat_kwargs(model_id, p) for p in prompts]
        alone = []
        for kw in reqs:
            text, finish, usage, _ = stream_text(client, kw)
            alone.append((text, finish, usage.completion_tokens))
        steps0 = metric(main_server, "moe_batch_sequences_count")
        single0 = metric(main_server, "moe_batch_sequences_bucket", {"le": "1.0"})
        results = [None] * len(reqs)
        errors = [None] * len(reqs)
        barrier = threading.Barrier(len(reqs))

        def worker(i):
            try:
                barrier.wait(30)
                text, finish, usage, _ = stream_text(client, reqs[i])
                results[i] = (text, finish, usage.completion_tokens)
            except Exception as e:  # noqa: BLE001
                errors[i] = f"{type(e).__name__}: {e}"

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(reqs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads), "a request did not finish in 120 s"
        failed = [(i, e) for i, e in enumerate(errors) if e]
        assert not failed, f"{len(failed)} requests failed, e.g. #{failed[0][0]}: {failed[0][1]}"
        differ = [i for i in range(len(reqs)) if results[i] != alone[i]]
        assert not differ, (
            f"{len(differ)}/32 greedy answers differ under load, e.g. #{differ[0]} "
            f"{prompts[differ[0]]!r}: alone {alone[differ[0]]!r}, batched {results[differ[0]]!r}"
        )
        steps = metric(main_server, "moe_batch_sequences_count") - steps0
        batched = steps - (metric(main_server, "moe_batch_sequences_bucket", {"le": "1.0"}) - single0)
        assert batched > 0, "no step ran more than one sequence: the requests were not batched"
        tokens = sum(r[2] for r in results)
        return f"32/32 equal, {tokens} tokens, {int(batched)}/{int(steps)} steps batched >1 sequence"

    def mixed_batch():
        # Greedy requests batched beside seeded sampled ones (temperature 1, top_k,
        # repetition_penalty): every answer as it is alone.
        greedy = [chat_kwargs(model_id, p) for p in prompts[:8]]
        sampled = [
            {**chat_kwargs(model_id, p, seed=100 + i,
                           extra_body={"top_k": 50, "repetition_penalty": 1.3}), "temperature": 1.0}
            for i, p in enumerate(prompts[8:16])
        ]
        reqs = greedy + sampled
        alone = [stream_text(client, kw)[0] for kw in reqs]
        results, errors = [None] * len(reqs), []
        barrier = threading.Barrier(len(reqs))

        def worker(i):
            try:
                barrier.wait(30)
                results[i] = stream_text(client, reqs[i])[0]
            except Exception as e:  # noqa: BLE001
                errors.append(f"#{i} {type(e).__name__}: {e}")

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(reqs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors[0]
        differ = [i for i in range(len(reqs)) if results[i] != alone[i]]
        assert not differ, (
            f"{len(differ)}/16 differ, e.g. #{differ[0]} ({'greedy' if differ[0] < 8 else 'sampled'}): "
            f"alone {alone[differ[0]]!r}, batched {results[differ[0]]!r}"
        )
        return "8 greedy + 8 seeded sampled, each as alone"

    def cancelled_stream():
        label = {"outcome": "cancelled"}
        before = metric(main_server, "moe_requests_total", label)
        # A text completion of a verse prompt runs on to max_tokens (no <|im_end|>), so that
        # the request is still running when the client goes away.
        room = context - 16
        stream = client.completions.create(
            model=model_id, prompt="ROMEO:\n", max_tokens=room, temperature=0, stream=True
        )
        got = 0
        for chunk in stream:
            got += 1
            if got >= 2:
                break
        stream.close()
        deadline = time.monotonic() + 5
        while True:
            now = metric(main_server, "moe_requests_total", label)
            if now > before:
                break
            if time.monotonic() > deadline:
                raise AssertionError(
                    f'moe_requests_total{{outcome="cancelled"}} stayed {now} for 5 s after the close'
                )
            time.sleep(0.05)
        while metric(main_server, "moe_running_sequences") != 0:
            assert time.monotonic() < deadline, "the cancelled sequence still holds its place"
            time.sleep(0.05)
        r = client.chat.completions.create(**chat_kwargs(model_id, prompts[2], max_tokens=8))
        assert r.choices[0].message.content, "no answer after the cancel"
        return f"cancelled {before:g} -> {now:g}; the server still answers"

    def bad_requests():
        bad = lambda **kw: (lambda: client.chat.completions.create(**{**chat_kwargs(model_id, "hi"), **kw}))
        seen = []
        for name, call in [
            ("n=2", bad(n=2)),
            ("temperature=-1", bad(temperature=-1)),
            (f"max_tokens={context + 1} (context {context})", bad(max_tokens=context + 1)),
            ("logprobs=true", bad(logprobs=True)),
            ("messages=[]", bad(messages=[])),
            ("top_k=0 (extension)", bad(extra_body={"top_k": 0})),
            ("a mistyped field (max_tokens=-1)", bad(max_tokens=-1)),
            ("text completion max_tokens past the context", lambda: client.completions.create(
                model=model_id, prompt="ROMEO:", max_tokens=context)),
        ]:
            try:
                expect_error(400, openai.BadRequestError, call)
                seen.append(name)
            except AssertionError as e:
                raise AssertionError(f"{name}: {e}") from None
        body = expect_error(404, openai.NotFoundError, bad(model="no-such-model"))
        assert body.get("param") == "model", body
        # The raw JSON: {"error": {"message", "type", "param", "code"}}.
        status, data, _ = raw(main_server, "POST", "/v1/chat/completions", {**chat_kwargs(model_id, "hi"), "n": 2})
        err = json.loads(data)["error"]
        assert status == 400 and err["type"] == "invalid_request_error" and err["param"] == "n", err
        assert str(err["code"]) == "400" and err["message"], err
        return f"400 for {len(seen)} bad requests, 404 for an unknown model"

    def too_large():
        size = (4 << 20) + 1024
        body = json.dumps({"model": model_id, "messages": [{"role": "user", "content": "a" * size}]}).encode()

        def post():
            conn = http.client.HTTPConnection(main_server.host, main_server.port, timeout=30)
            try:
                conn.putrequest("POST", "/v1/chat/completions")
                conn.putheader("Content-Type", "application/json")
                conn.putheader("Content-Length", str(len(body)))
                conn.endheaders()
                try:
                    conn.send(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the server may answer and close before reading it all
                r = conn.getresponse()
                return r.status, r.read()
            finally:
                conn.close()

        # A server that closes with the body's tail unread may reset the connection before
        # its 413 is read: that race is the socket's, not the server's; try again.
        for attempt in range(3):
            try:
                status, data = post()
                break
            except (ConnectionResetError, http.client.RemoteDisconnected):
                if attempt == 2:
                    raise
        assert status == 413, f"{len(body)} bytes answered {status}: {data[:200]!r}"
        assert "error" in json.loads(data), data[:200]
        return f"{len(body)} bytes -> 413"

    checks.run("health", health)
    checks.run("models.list", models_list)
    checks.run("chat, not streamed (greedy, repeatable)", chat_plain)
    checks.run("chat, streamed with include_usage == not streamed", chat_streamed)
    checks.run("text completion (and streamed == not streamed)", text_completion)
    checks.run("keep-alive stream not held back (TCP_NODELAY)", keep_alive_stream)
    checks.run("stop strings (streamed == not streamed)", stop_strings)
    checks.run("sampling extensions top_k/min_p/repetition_penalty + seed", sampling_extensions)
    checks.run("32 concurrent streams == each alone (greedy)", concurrent_32)
    checks.run("greedy beside seeded sampling under load == alone", mixed_batch)
    checks.run("cancelled stream counted, place freed, server answers", cancelled_stream)
    checks.run("bad requests -> 400 / 404 (OpenAI error JSON)", bad_requests)
    checks.run("body over 4 MiB -> 413", too_large)

    def sigint_exit():
        code = main_server.stop(signal.SIGINT, grace=10)
        assert code == 0, f"exit status {code} after SIGINT (None: still running after 10 s)"

    checks.run("main server exits 0 on SIGINT", sigint_exit)

    # --- a server with a key and another name
    key, name = "test-key-0123", "shakespeare-renamed"
    auth = Server(moe, base_args + ["--api-key", key, "--served-model-name", name], "auth")

    def authentication():
        wrong = auth.client(api_key="wrong-key")
        expect_error(401, openai.AuthenticationError, lambda: wrong.models.list())
        expect_error(401, openai.AuthenticationError,
                     lambda: wrong.chat.completions.create(**chat_kwargs(name, "hi", max_tokens=4)))
        for headers in ({}, {"Authorization": "Bearer " + key + "x"}, {"Authorization": key}):
            status, data, h = raw(auth, "GET", "/v1/models", headers=headers)
            assert status == 401, f"{headers}: {status}"
            assert json.loads(data)["error"]["type"] == "authentication_error", data
        status, _, _ = raw(auth, "GET", "/metrics")
        assert status == 401, f"/metrics without a key: {status}"
        status, data, _ = raw(auth, "GET", "/health")
        assert (status, data.strip()) == (200, b"ok"), f"/health without a key: {status} {data!r}"
        right = auth.client(api_key=key)
        ids = [m.id for m in right.models.list()]
        assert ids == [name], ids
        r = right.chat.completions.create(**chat_kwargs(name, "hi", max_tokens=4))
        assert r.model == name and r.choices[0].message.content, r
        expect_error(404, openai.NotFoundError,
                     lambda: right.chat.completions.create(**chat_kwargs(model_id, "hi", max_tokens=4)))
        return "401 without/with a wrong key, /health open, --served-model-name honoured"

    checks.run("--api-key -> 401 (AuthenticationError), --served-model-name", authentication)

    def sigterm_exit():
        auth.stop(signal.SIGTERM, grace=10)
        code = auth.proc.poll()
        assert code is not None, "still running 10 s after SIGTERM"
        if code == -signal.SIGTERM:
            return "exit status -15: killed by the signal (SIGTERM is not handled: no graceful drain)"
        return f"exit status {code}"

    checks.run("auth server stops on SIGTERM", sigterm_exit)

    # --- a server with one place and a queue of one
    busy = Server(moe, base_args + ["--max-batch", "1", "--max-queue", "1"], "busy")

    def queue_full():
        c = busy.client()
        room = context - 16
        # The place: a long text completion, seen running (its first token arrived).
        running = c.completions.create(model=model_id, prompt="ROMEO:\n", max_tokens=room, temperature=0, stream=True)
        next(iter(running))
        # The queue: a stream that waits for the place.
        waiting = c.chat.completions.create(stream=True, **chat_kwargs(model_id, "hi", max_tokens=8))
        try:
            try:
                c.chat.completions.create(**chat_kwargs(model_id, "hi", max_tokens=4))
            except openai.APIStatusError as e:
                assert e.status_code == 503, f"{e.status_code}: {e}"
                retry = e.response.headers.get("retry-after")
                assert retry is not None and retry.isdigit(), f"Retry-After: {retry!r}"
                return f"503, Retry-After: {retry}"
            raise AssertionError("a third request with one place and a queue of one was not refused")
        finally:
            running.close()
            waiting.close()

    checks.run("full queue -> 503 + Retry-After", queue_full)
    busy.stop()


if __name__ == "__main__":
    sys.exit(main())
