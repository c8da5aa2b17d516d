#!/usr/bin/env python3
"""A load benchmark of `moe serve`: concurrent streamed chat clients against each --max-batch.

    python tools/bench_serve.py [--moe target/release/moe] [--max-batch 1,32] [--clients 16]
        [--requests 64] [--max-tokens 64] [--duration 120] [--json out.json]
        [--model DIR] [--dtype bf16] [--server-args "--threads 2 ..."]

For each --max-batch value it starts `moe serve --port 0 --max-batch N` (plus --model, --dtype,
--server-args), sends one warm-up request, then runs --clients client threads, each sending
streamed chat requests (temperature 0, varied prompts) back to back on its own keep-alive
connection until --requests have been sent or --duration seconds have passed (a hard cap:
streams still open then are cut and reported as such). Per setting it reports:

  requests completed        (and failed / cut at the cap)
  output tokens/s           completion tokens of the completed requests / wall time
  TTFT p50/p90/p99          request sent -> first chunk with text
  ITL p50/p90/p99           gaps between consecutive text chunks of a stream (the server sends
                            a chunk per decoded piece: about one per token). A client thread
                            that falls behind reads two chunks back to back (a gap near 0), which
                            happens when the server takes every core the client also needs
  TPOT p50/p90/p99          per request: (last text chunk - first) / (chunks - 1), which such
                            bunching does not shrink
  server core-s/token       /metrics moe_process_core_seconds after - before, over the prompt +
                            completion tokens, and over the completion tokens alone
  tokens/J                  where /metrics has moe_energy_joules, per source, MEASURED or
                            ESTIMATED (measured="false", e.g. --server-args
                            "--estimate-watts-per-core 10"); absent on machines without a sensor
  client CPU-s              this script's own CPU time (all threads) over the run, so that its
                            share of a machine shared with the server is visible

and prints a markdown table comparing the settings; --json FILE writes the raw numbers.
The HTTP client is raw http.client SSE reading by default (light on CPU); --client openai uses
the official `openai` client instead (pip install -r tools/requirements-serve.txt).
"""

import argparse
import http.client
import json
import os
import random
import re
import resource
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SPEAKERS = [
    "ROMEO", "JULIET", "HAMLET", "OPHELIA", "MACBETH", "PORTIA", "OTHELLO", "VIOLA",
    "PROSPERO", "MIRANDA", "LEAR", "CORDELIA", "FALSTAFF", "ROSALIND", "BRUTUS", "CLEOPATRA",
]
ASKS = [
    "what news from Verona?",
    "speak, I pray thee, of thy father's ghost.",
    "wherefore dost thou weep upon this night?",
    "good morrow, gentle friend.",
    "how fares the king this day?",
    "tell me true: dost thou love me?",
    "what say'st thou to this tempest?",
    "is this a dagger which I see before me?",
]
VERSE = (
    "Shall I compare thee to a summer's day? Thou art more lovely and more temperate: "
    "Rough winds do shake the darling buds of May, And summer's lease hath all too short a date. "
)


def make_prompts(n, seed=0):
    """n varied chat prompts: speaker x question, some with a verse prefix of 1-3 lines."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        text = f"{SPEAKERS[i % len(SPEAKERS)]}, {ASKS[(i // len(SPEAKERS)) % len(ASKS)]}"
        if i >= len(SPEAKERS) * len(ASKS):
            text += f" ({i})"
        if rng.random() < 0.25:
            text = VERSE * rng.randint(1, 3) + text
        out.append(text)
    return out


# --------------------------------------------------------------------------------------------
# The server


class Server:
    def __init__(self, cmd):
        env = dict(os.environ)
        self.cmd = cmd
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=self.log, stdin=subprocess.DEVNULL, env=env
        )
        box = []
        t = threading.Thread(target=lambda: box.append(self.proc.stdout.readline().decode()), daemon=True)
        t.start()
        t.join(300)  # a large model may take a while to load
        m = re.fullmatch(r"listening on (http://\S+)", (box or [""])[0].strip())
        if not m:
            self.stop()
            raise RuntimeError(f"no `listening on` line from {' '.join(cmd)}\n{self.log_tail()}")
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()
        u = urllib.parse.urlsplit(m.group(1))
        self.base, self.host, self.port = m.group(1), u.hostname, u.port
        deadline = time.monotonic() + 60
        while True:
            try:
                if get(self, "/health", {})[0] == 200:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"/health never answered\n{self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, n=3000):
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-n:]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def get(server, path, headers):
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        conn.close()


LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(server, headers):
    """The /metrics samples we use: core-seconds, token counters, energy per source."""
    status, text = get(server, "/metrics", headers)
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}: {text[:200]}")
    out = {"core_seconds": None, "prefill_tokens": 0.0, "decode_tokens": 0.0, "energy": {}, "requests": {}}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        name, _, labels = key.partition("{")
        labels = dict(LABEL.findall(labels))
        try:
            v = float(value)
        except ValueError:
            continue
        if name == "moe_process_core_seconds":
            out["core_seconds"] = v
        elif name == "moe_prefill_tokens_total":
            out["prefill_tokens"] = v
        elif name == "moe_decode_tokens_total":
            out["decode_tokens"] = v
        elif name == "moe_requests_total":
            out["requests"][labels.get("outcome", "?")] = v
        elif name == "moe_energy_joules":
            src = (labels.get("source", "?"), labels.get("covers", ""), labels.get("measured", "?"))
            out["energy"][src] = v
    return out


# --------------------------------------------------------------------------------------------
# The clients


class Cut(Exception):
    """The run's cap passed with the stream still open."""


class Cap:
    """The hard end of a run: at `deadline` (perf_counter) every open stream is shut."""

    def __init__(self, deadline):
        self.deadline = deadline
        self.expired = False
        self._open = {}
        self._lock = threading.Lock()
        self._timer = None
        if deadline != float("inf"):
            self._timer = threading.Timer(max(0.0, deadline - time.perf_counter()), self.fire)
            self._timer.daemon = True
            self._timer.start()

    def fire(self):
        with self._lock:
            self.expired = True
            shuts = list(self._open.values())
        for shut in shuts:
            try:
                shut()
            except Exception:  # noqa: BLE001 - a stream that ended meanwhile
                pass

    def cancel(self):
        if self._timer:
            self._timer.cancel()

    def watch(self, key, shut):
        with self._lock:
            if self.expired:
                raise Cut()
            self._open[key] = shut

    def unwatch(self, key):
        with self._lock:
            self._open.pop(key, None)


def _shut(conn):
    sock = conn.sock
    if sock is not None:
        sock.shutdown(socket.SHUT_RDWR)


def stream_raw(conn_box, server, path, body, headers, cap):
    """One streamed request to `path` (chat or text completions) on a keep-alive connection
    (re-made when needed).

    Returns (t_sent, [arrival times of chunks with text], usage dict or None, status)."""
    payload = json.dumps(body).encode()
    h = {"Content-Type": "application/json", "Accept": "text/event-stream", **headers}
    for attempt in (0, 1):
        if conn_box[0] is None:
            conn_box[0] = http.client.HTTPConnection(server.host, server.port, timeout=60)
        conn = conn_box[0]
        t_sent = time.perf_counter()
        try:
            conn.request("POST", path, body=payload, headers=h)
            resp = conn.getresponse()
            break
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            conn.close()
            conn_box[0] = None  # a keep-alive connection the server closed: once more
            if attempt:
                raise
    if resp.status != 200:
        resp.read()
        return t_sent, [], None, resp.status
    times, usage, done = [], None, False
    key = object()
    try:
        cap.watch(key, lambda: _shut(conn))
        while True:
            try:
                line = resp.readline()
            except (OSError, http.client.HTTPException):
                if cap.expired:
                    raise Cut() from None
                raise
            if not line:
                if cap.expired:
                    raise Cut()
                break
            if not line.startswith(b"data: "):
                continue
            data = line[6:].strip()
            if data == b"[DONE]":
                done = True
                break
            now = time.perf_counter()
            chunk = json.loads(data)
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or ():
                if (choice.get("delta") or {}).get("content") or choice.get("text"):
                    times.append(now)
        if not done:
            raise RuntimeError("the stream ended without [DONE]")
        resp.read()  # the end of the chunked body, so that the connection can be reused
    except BaseException:
        conn.close()
        conn_box[0] = None
        raise
    finally:
        cap.unwatch(key)
    return t_sent, times, usage, 200


def stream_openai(client, body, cap):
    import openai

    t_sent = time.perf_counter()
    times, usage = [], None
    key = object()
    try:
        kw = dict(body)
        kw.pop("stream", None)
        with client.chat.completions.create(stream=True, **kw) as stream:
            cap.watch(key, stream.close)
            for chunk in stream:
                now = time.perf_counter()
                if chunk.usage is not None:
                    usage = {"prompt_tokens": chunk.usage.prompt_tokens, "completion_tokens": chunk.usage.completion_tokens}
                for choice in chunk.choices:
                    if choice.delta.content:
                        times.append(now)
            if cap.expired:
                raise Cut()
    except openai.APIStatusError as e:
        return t_sent, [], None, e.status_code
    except Exception:
        if cap.expired:
            raise Cut() from None
        raise
    finally:
        cap.unwatch(key)
    return t_sent, times, usage, 200


def percentile(values, p):
    """Linear interpolation between closest ranks; None for no values."""
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def cpu_seconds():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def run_setting(opts, max_batch, prompts):
    cmd = [opts.moe, "serve", "--port", "0", "--max-batch", str(max_batch)]
    if opts.model:
        cmd += ["--model", opts.model]
    if opts.dtype:
        cmd += ["--dtype", opts.dtype]
    if opts.api_key:
        cmd += ["--api-key", opts.api_key]
    cmd += shlex.split(opts.server_args or "")
    headers = {"Authorization": f"Bearer {opts.api_key}"} if opts.api_key else {}
    print(f"# max_batch={max_batch}: {' '.join(shlex.quote(c) for c in cmd)}", file=sys.stderr, flush=True)
    server = Server(cmd)
    try:
        status, text = get(server, "/v1/models", headers)
        if status != 200:
            raise RuntimeError(f"/v1/models answered {status}: {text[:200]}")
        model_id = json.loads(text)["data"][0]["id"]

        path = "/v1/chat/completions" if opts.endpoint == "chat" else "/v1/completions"

        def body(i):
            prompt = prompts[i % len(prompts)]
            request = {
                "model": model_id,
                "temperature": 0,
                "max_tokens": opts.max_tokens,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            if opts.endpoint == "chat":
                request["messages"] = [{"role": "user", "content": prompt}]
            else:
                request["prompt"] = prompt
            if opts.ignore_eos:
                request["ignore_eos"] = True
            return request

        client = None
        if opts.client == "openai":
            from openai import OpenAI

            client = OpenAI(base_url=server.base + "/v1", api_key=opts.api_key or "unused", max_retries=0, timeout=120)

        def one(conn_box, i, cap):
            if client is not None:
                return stream_openai(client, body(i), cap)
            return stream_raw(conn_box, server, path, body(i), headers, cap)

        # Warm-up (caches, the first allocations), outside the measured window.
        warm_box = [None]
        one(warm_box, len(prompts) - 1, Cap(float("inf")))
        if warm_box[0]:
            warm_box[0].close()

        before = scrape(server, headers)
        lock = threading.Lock()
        next_index = [0]
        records, failures, cut = [], {}, [0]
        t0 = time.perf_counter()
        hard_deadline = t0 + opts.duration
        cap = Cap(hard_deadline)
        cpu0, proc0 = cpu_seconds(), time.process_time()

        def client_loop():
            box = [None]
            while True:
                with lock:
                    i = next_index[0]
                    if i >= opts.requests or time.perf_counter() > hard_deadline:
                        break
                    next_index[0] += 1
                try:
                    t_sent, times, usage, status = one(box, i, cap)
                except Cut:
                    with lock:
                        cut[0] += 1
                    break
                except Exception as e:  # noqa: BLE001 - counted, and the client goes on
                    with lock:
                        failures[type(e).__name__] = failures.get(type(e).__name__, 0) + 1
                    if box[0]:
                        box[0].close()
                        box[0] = None
                    continue
                with lock:
                    if status != 200 or usage is None:
                        key = f"HTTP {status}" if status != 200 else "no usage chunk"
                        failures[key] = failures.get(key, 0) + 1
                    else:
                        records.append((t_sent, times, usage))
            if box[0]:
                box[0].close()

        threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(opts.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(opts.duration + 120)
        wall = time.perf_counter() - t0
        cap.cancel()
        client_cpu = cpu_seconds() - cpu0
        client_proc = time.process_time() - proc0
        after = scrape(server, headers)
    finally:
        server.stop()

    ttft = [times[0] - t_sent for t_sent, times, _ in records if times]
    itl = [b - a for _, times, _ in records for a, b in zip(times, times[1:])]
    # Per request: (last text chunk - first) / (chunks - 1); unlike single gaps, not shrunk
    # when a client that fell behind reads two chunks back to back.
    tpot = [(times[-1] - times[0]) / (len(times) - 1) for _, times, _ in records if len(times) > 1]
    prompt_tokens = sum(u["prompt_tokens"] for _, _, u in records)
    completion_tokens = sum(u["completion_tokens"] for _, _, u in records)
    text_chunks = sum(len(times) for _, times, _ in records)
    core = None
    if before["core_seconds"] is not None and after["core_seconds"] is not None:
        core = after["core_seconds"] - before["core_seconds"]
    total_tokens = prompt_tokens + completion_tokens
    energy = []
    for src, joules in after["energy"].items():
        j = joules - before["energy"].get(src, 0.0)
        name, covers, measured = src
        energy.append({
            "source": name,
            "covers": covers,
            "measured": measured,
            "joules": j,
            "tokens_per_joule": total_tokens / j if j > 0 else None,
            "completion_tokens_per_joule": completion_tokens / j if j > 0 else None,
        })
    pct = lambda xs: {f"p{p}": percentile(xs, p) for p in (50, 90, 99)}
    return {
        "max_batch": max_batch,
        "server_cmd": cmd,
        "client": opts.client,
        "clients": opts.clients,
        "requests_sent": next_index[0],
        "requests_completed": len(records),
        "requests_failed": failures,
        "requests_cut_at_cap": cut[0],
        "wall_seconds": wall,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "completion_tokens_per_request": completion_tokens / len(records) if records else None,
        "text_chunks": text_chunks,
        "output_tokens_per_second": completion_tokens / wall if wall > 0 else None,
        "ttft_seconds": pct(ttft),
        "itl_seconds": pct(itl),
        "tpot_seconds": pct(tpot),
        "server_core_seconds": core,
        "server_core_seconds_per_token": core / total_tokens if core is not None and total_tokens else None,
        "server_core_seconds_per_completion_token": core / completion_tokens if core is not None and completion_tokens else None,
        "server_prefill_tokens": after["prefill_tokens"] - before["prefill_tokens"],
        "server_decode_tokens": after["decode_tokens"] - before["decode_tokens"],
        "server_requests_by_outcome": {
            k: v - before["requests"].get(k, 0.0) for k, v in after["requests"].items()
        },
        "energy": energy,
        "client_cpu_seconds": client_cpu,
        "client_process_time_seconds": client_proc,
    }


# --------------------------------------------------------------------------------------------
# The report


def fmt(v, scale=1.0, digits=1):
    return "-" if v is None else f"{v * scale:.{digits}f}"


def fmt_sig(v):
    return "-" if v is None else f"{v:.3g}"


def table(results):
    head = "| | " + " | ".join(f"max_batch={r['max_batch']}" for r in results) + " |"
    rows = [head, "|---|" + "---|" * len(results)]

    def row(label, f):
        rows.append(f"| {label} | " + " | ".join(f(r) for r in results) + " |")

    def reqs(r):
        s = f"{r['requests_completed']}/{r['requests_sent']}"
        bad = sum(r["requests_failed"].values())
        extra = []
        if bad:
            extra.append(f"{bad} failed: " + ", ".join(f"{k} x{v}" for k, v in r["requests_failed"].items()))
        if r["requests_cut_at_cap"]:
            extra.append(f"{r['requests_cut_at_cap']} cut at the cap")
        return s + (f" ({'; '.join(extra)})" if extra else "")

    row("requests completed/sent", reqs)
    row("wall s", lambda r: fmt(r["wall_seconds"], digits=2))
    row("completion tokens (per request)", lambda r: f"{r['completion_tokens']} ({fmt(r['completion_tokens_per_request'])})")
    row("output tokens/s", lambda r: fmt(r["output_tokens_per_second"]))
    for p in ("p50", "p90", "p99"):
        row(f"TTFT {p} ms", lambda r, p=p: fmt(r["ttft_seconds"][p], 1e3))
    for p in ("p50", "p90", "p99"):
        row(f"ITL {p} ms", lambda r, p=p: fmt(r["itl_seconds"][p], 1e3, 2))
    for p in ("p50", "p90", "p99"):
        row(f"TPOT {p} ms (per request)", lambda r, p=p: fmt(r["tpot_seconds"][p], 1e3, 2))
    row("server core-s", lambda r: fmt(r["server_core_seconds"], digits=2))
    row("server core-ms/token (prompt+completion)", lambda r: fmt(r["server_core_seconds_per_token"], 1e3, 3))
    row("server core-ms/completion token", lambda r: fmt(r["server_core_seconds_per_completion_token"], 1e3, 3))
    sources = []
    for r in results:
        for e in r["energy"]:
            key = (e["source"], e["covers"], e["measured"])
            if key not in sources:
                sources.append(key)
    for name, covers, measured in sources:
        tag = "MEASURED" if measured == "true" else "ESTIMATED"

        def energy_cell(r, key=(name, covers, measured)):
            for e in r["energy"]:
                if (e["source"], e["covers"], e["measured"]) == key:
                    return f"{fmt_sig(e['tokens_per_joule'])} ({fmt_sig(e['completion_tokens_per_joule'])} completion)"
            return "-"

        row(f"tokens/J, {name} [{tag}]", energy_cell)
    if not sources:
        row("tokens/J", lambda r: "no energy source in /metrics")
    row("client CPU-s (share of server core-s)", lambda r: (
        f"{r['client_cpu_seconds']:.2f}"
        + (f" ({100 * r['client_cpu_seconds'] / r['server_core_seconds']:.0f}%)" if r["server_core_seconds"] else "")
    ))
    notes = [f"- tokens/J {n} [{'MEASURED' if m == 'true' else 'ESTIMATED'}]: {c}" for n, c, m in sources]
    return "\n".join(rows + ([""] + notes if notes else []))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moe", default=os.path.join(ROOT, "target", "release", "moe"), help="the moe binary")
    ap.add_argument("--max-batch", default="1,32", help="comma list of --max-batch values, one server each")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients")
    ap.add_argument("--requests", type=int, default=64, help="requests per setting, in all")
    ap.add_argument("--max-tokens", type=int, default=64, help="max_tokens of each request")
    ap.add_argument("--duration", type=float, default=120.0, help="cap on each setting's run, seconds")
    ap.add_argument("--json", help="write the raw numbers here")
    ap.add_argument("--model", help="passed to the server as --model")
    ap.add_argument("--dtype", help="passed to the server as --dtype")
    ap.add_argument("--api-key", help="passed to the server, and sent by the clients")
    ap.add_argument("--server-args", default="", help='more server arguments, one string: "--threads 2 --quant q8_0"')
    ap.add_argument("--client", choices=("raw", "openai"), default="raw",
                    help="raw http.client SSE reading (default, light) or the openai package")
    ap.add_argument("--seed", type=int, default=0, help="of the prompt mix")
    ap.add_argument("--endpoint", choices=("chat", "completions"), default="chat",
                    help="chat completions (the model's template), or text completions (any checkpoint)")
    ap.add_argument("--ignore-eos", action="store_true",
                    help="every request generates --max-tokens (the server's ignore_eos extension)")
    opts = ap.parse_args()
    if opts.client == "openai" and opts.endpoint != "chat":
        sys.exit("--client openai runs chat requests only")
    if not os.path.exists(opts.moe):
        sys.exit(f"no binary at {opts.moe}: build it, or pass --moe")
    # A SIGTERM (a CI timeout) unwinds like Ctrl-C: each server is stopped by its `finally`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    batches = [int(b) for b in opts.max_batch.split(",") if b.strip()]
    if not batches or opts.clients < 1 or opts.requests < 1 or opts.max_tokens < 1:
        sys.exit("--max-batch, --clients, --requests and --max-tokens must be positive")
    prompts = make_prompts(max(opts.requests, 1) + 1, opts.seed)

    results = []
    for b in batches:
        r = run_setting(opts, b, prompts)
        results.append(r)
        print(
            f"# max_batch={b}: {r['requests_completed']}/{r['requests_sent']} requests, "
            f"{fmt(r['output_tokens_per_second'])} output tokens/s, wall {r['wall_seconds']:.2f} s",
            file=sys.stderr, flush=True,
        )
    print(
        f"\n{opts.clients} clients, {opts.requests} streamed {opts.endpoint} requests per setting, "
        f"max_tokens {opts.max_tokens}, temperature 0, client {opts.client}, cap {opts.duration:g} s\n"
    )
    print(table(results))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"args": vars(opts), "results": results}, f, indent=2)
        print(f"\nraw numbers: {opts.json}")
    bad = any(r["requests_completed"] == 0 for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
