#!/usr/bin/python3
"""`moe serve` end to end, on loopback ports the server picks (--port 0):
  - a tiny run trained here (completions only): curl checks of /health, /v1/models, completions
    streamed and not (the same text), seeds, n, logprobs, routes, stop strings, chat refused;
  - a Hugging Face fixture folder given a ChatML tokenizer, behind --api-key and --max-body:
    401 without the key, 413 for a large body, the official `openai` npm client (chat and
    completions, streamed and not; tests/e2e/serve_openai.cjs);
  - the error cases (malformed JSON, wrong types, unknown model, a prompt past the context);
  - a slowed server (--debug-step-delay): 503 with Retry-After on a full queue, a client gone
    mid-stream frees its slot, a reader that never reads stalls nobody, SIGTERM cancels what is
    still running after --shutdown-timeout and exits 0;
  - a bounded load test: many clients, mixed lengths, streamed and not, some leaving early, some
    malformed; afterwards every well-formed request had its whole answer, no slot is held, and
    the resident memory is back near its level after warm-up.
argv: moe source-dir hf-fixture-dir"""
import concurrent.futures
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import shipped_corpus  # beside this file

MOE, SRC, HF = sys.argv[1], sys.argv[2], sys.argv[3]


class Server:
    def __init__(self, work, name, *args):
        self.log = os.path.join(work, name + ".log")
        self.proc = subprocess.Popen([MOE, "serve", "--port", "0", *args],
                                     stdout=subprocess.DEVNULL, stderr=open(self.log, "w"))
        deadline = time.time() + 30
        while time.time() < deadline:
            m = re.search(r"listening on http://([0-9.]+):(\d+)", open(self.log).read())
            if m:
                self.host, self.port = m.group(1), int(m.group(2))
                return
            assert self.proc.poll() is None, f"moe serve exited: {open(self.log).read()}"
            time.sleep(0.05)
        raise AssertionError("moe serve did not start")

    @property
    def url(self):
        return f"http://{self.host}:{self.port}"

    def request(self, method, path, body=None, headers=None, timeout=30):
        """(status, headers, body bytes); a dict body is sent as JSON."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        data = json.dumps(body) if isinstance(body, (dict, list)) else body
        conn.request(method, path, body=data, headers={"Content-Type": "application/json",
                                                       **(headers or {})})
        r = conn.getresponse()
        out = (r.status, dict(r.getheaders()), r.read())
        conn.close()
        return out

    def post(self, path, body, headers=None):
        status, head, data = self.request("POST", path, body, headers)
        return status, head, json.loads(data)

    def metrics(self):
        status, _, data = self.request("GET", "/metrics")
        assert status == 200
        values = {}
        for line in data.decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values

    def rss_kib(self):
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self, timeout=15):
        """SIGTERM: the server must exit 0 within `timeout` seconds."""
        start = time.time()
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=timeout)
        assert rc == 0, f"moe serve exited {rc} after SIGTERM: {open(self.log).read()}"
        return time.time() - start


def curl(*args):
    r = subprocess.run(["curl", "-sS", "--max-time", "30", *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def sse_events(text):
    """The data of each server-sent event, [DONE] included, in order."""
    return [block[len("data: "):] for block in text.split("\n\n") if block.startswith("data: ")]


def expect_error(server, path, body, status, param=None, code=None, headers=None):
    got, head, data = server.request("POST", path, body, headers)
    assert got == status, (body, got, data)
    error = json.loads(data)["error"]
    assert isinstance(error["message"], str) and error["message"], error
    assert set(error) == {"message", "type", "param", "code"}, error
    if param is not None:
        assert error["param"] == param, (error, param)
    if code is not None:
        assert error["code"] == code, (error, code)
    return head, error


def make_run(work):
    corpus = os.path.join(work, "corpus.txt")
    shipped_corpus.write_plain_text(SRC, corpus, 40)
    run = os.path.join(work, "run")
    r = subprocess.run([MOE, "train", "--out", run, "--config",
                        os.path.join(SRC, "tests/cases/tiny_model.json"), "--corpus", corpus,
                        "--steps", "20", "--batch-size", "4", "--seq-len", "16", "--eval-every",
                        "20", "--warmup", "2", "--quiet", "--no-sample"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return run


def make_chat_folder(work):
    """The Qwen2-MoE fixture (97 ids) with a byte-level BPE tokenizer.json of 94 single bytes
    (space and newline as their byte-level letters) and ChatML's three added tokens, and a
    tokenizer_config.json whose chat_template is ChatML's."""
    folder = os.path.join(work, "chat")
    shutil.copytree(os.path.join(HF, "qwen2_moe_f32"), folder)
    letters = ["Ġ", "Ċ"] + [chr(c) for c in range(ord("!"), ord("~")) if chr(c) != "`"]
    vocab = {ch: i for i, ch in enumerate(letters)}
    added = [{"id": len(vocab) + i, "content": t, "special": True, "single_word": False,
              "lstrip": False, "rstrip": False, "normalized": False}
             for i, t in enumerate(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])]
    assert len(vocab) + len(added) == 97
    with open(os.path.join(folder, "tokenizer.json"), "w") as f:
        json.dump({"model": {"type": "BPE", "vocab": vocab, "merges": []},
                   "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
                   "decoder": {"type": "ByteLevel"}, "added_tokens": added}, f)
    template = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
                "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
                "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"chat_template": template, "eos_token": "<|endoftext|>"}, f)
    return folder


def check_completions(server):
    """curl against the run: health, models, completions streamed and not, seeds, n, logprobs,
    routes, stop strings; chat refused."""
    assert json.loads(curl(server.url + "/health")) == {"status": "ok"}
    models = json.loads(curl(server.url + "/v1/models"))
    assert [m["id"] for m in models["data"]] == ["run"], models
    # A seed whose text is long enough to cut with a stop string.
    for seed in range(40):
        ask = {"prompt": "NAME", "max_tokens": 12, "temperature": 1.0, "seed": seed}
        whole = json.loads(curl(server.url + "/v1/completions", "-d", json.dumps(ask)))
        text = whole["choices"][0]["text"]
        if len(text.strip()) >= 6 and whole["choices"][0]["finish_reason"] == "length":
            break
    assert whole["object"] == "text_completion" and whole["model"] == "run", whole
    assert whole["usage"]["completion_tokens"] == 12, whole["usage"]
    assert whole["usage"]["total_tokens"] == whole["usage"]["prompt_tokens"] + 12
    again = json.loads(curl(server.url + "/v1/completions", "-d", json.dumps(ask)))
    assert again["choices"][0]["text"] == text, "the same seed gave another text"
    events = sse_events(curl("-N", server.url + "/v1/completions", "-d",
                             json.dumps({**ask, "stream": True})))
    assert events[-1] == "[DONE]", events
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == text, (chunks, text)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    print(f"ok: completion streamed and not: {text!r}")

    # stop: the text ends just before the first occurrence, finish_reason "stop".
    stop = text.strip()[2:4]
    cut = json.loads(curl(server.url + "/v1/completions", "-d", json.dumps({**ask, "stop": [stop]})))
    assert cut["choices"][0]["text"] == text[:text.find(stop)], (cut, text, stop)
    assert cut["choices"][0]["finish_reason"] == "stop"
    events = sse_events(curl("-N", server.url + "/v1/completions", "-d",
                             json.dumps({**ask, "stop": stop, "stream": True})))
    streamed = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
    assert streamed == cut["choices"][0]["text"], (streamed, cut)
    print(f"ok: stop {stop!r} cuts the text, streamed and not")

    # n choices, logprobs and routes.
    rich = json.loads(curl(server.url + "/v1/completions", "-d", json.dumps(
        {**ask, "n": 2, "logprobs": 2, "moe": {"routes": True}, "max_tokens": 5})))
    assert [c["index"] for c in rich["choices"]] == [0, 1], rich
    assert rich["usage"]["completion_tokens"] == 10
    for c in rich["choices"]:
        lp = c["logprobs"]
        assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 5, lp
        assert all(x <= 0 for x in lp["token_logprobs"]) and all(len(t) == 2 for t in lp["top_logprobs"])
    moe = rich["moe"]
    assert moe["layers"] == [1], moe  # tiny_model.json: every other of 2 blocks
    for c in moe["choices"]:
        assert len(c["tokens"]) == 5
        for t in c["tokens"]:
            assert len(t["experts"]) == 1 and len(t["experts"][0]) == 2, t  # top-2 of 4
            assert all(0 <= e < 4 for e in t["experts"][0])
    events = sse_events(curl("-N", server.url + "/v1/completions", "-d", json.dumps(
        {**ask, "max_tokens": 5, "moe": {"routes": True}, "stream": True})))
    routed = [t for e in events[:-1] for t in json.loads(e).get("moe", {}).get("tokens", [])]
    assert len(routed) == 5 and all(len(t["experts"][0]) == 2 for t in routed), routed
    print("ok: n=2, logprobs, routes (in the answer and in stream chunks)")

    expect_error(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]},
                 400, "messages", "no_chat_template")
    print("ok: chat on a run without a template: 400")


def check_errors(server):
    expect_error(server, "/v1/completions", "{not json", 400)
    expect_error(server, "/v1/completions", "[1, 2]", 400)
    expect_error(server, "/v1/completions", {"prompt": "x", "temperature": "hot"}, 400, "temperature")
    expect_error(server, "/v1/completions", {"prompt": "x", "max_tokens": 0}, 400, "max_tokens")
    expect_error(server, "/v1/completions", {"prompt": "x", "max_tokens": 2.5}, 400, "max_tokens")
    expect_error(server, "/v1/completions", {"prompt": "x", "stream": "yes"}, 400, "stream")
    expect_error(server, "/v1/completions", {"prompt": "x", "stop": 3}, 400, "stop")
    expect_error(server, "/v1/completions", {"prompt": {"text": "x"}}, 400, "prompt")
    expect_error(server, "/v1/completions", {"temperature": 1}, 400, "prompt")
    expect_error(server, "/v1/completions", {"prompt": "x", "model": "gpt-4"}, 400, "model",
                 "model_not_found")
    expect_error(server, "/v1/completions", {"prompt": "NAME " * 100}, 400, "prompt",
                 "context_length_exceeded")
    expect_error(server, "/v1/completions", {"prompt": [5, 100000]}, 400)
    status, _, data = server.request("GET", "/v1/nothing")
    assert status == 404 and "error" in json.loads(data), (status, data)
    print("ok: malformed JSON, wrong types, unknown model, a prompt past the context: 400")


def check_chat_server(server, work):
    key = {"Authorization": "Bearer secret"}
    expect_error(server, "/v1/chat/completions", {"messages": []}, 401, code="invalid_api_key")
    expect_error(server, "/v1/completions", {"prompt": "x"}, 401,
                 headers={"Authorization": "Bearer wrong"})
    status, _, _ = server.request("GET", "/health")
    assert status == 200
    head, _ = expect_error(server, "/v1/completions", json.dumps({"prompt": "x" * 10000}), 413,
                           headers=key)
    print("ok: 401 without the key (/health open), 413 for a body over --max-body")
    expect_error(server, "/v1/chat/completions", {"messages": [{"role": "tool", "content": "x"}]},
                 400, "messages", headers=key)
    status, _, answer = server.post("/v1/chat/completions", {
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "hi there"}], "temperature": 0, "max_tokens": 6,
        "logprobs": True, "top_logprobs": 2}, key)
    assert status == 200, answer
    content = answer["choices"][0]["logprobs"]["content"]
    assert len(content) == answer["usage"]["completion_tokens"]
    assert all(len(c["top_logprobs"]) == 2 for c in content), content
    # Each turn, then the assistant's opening: one id per byte or added token.
    rendered = ("<|im_start|>system\nBe brief.<|im_end|>\n"
                "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n")
    expected = len(re.sub(r"<\|im_(start|end)\|>", "#", rendered))
    assert answer["usage"]["prompt_tokens"] == expected, (answer["usage"], expected)
    print("ok: ChatML rendered as the template says, chat logprobs")

    node_modules = subprocess.run(["bash", os.path.join(SRC, "scripts/openai_client.sh")],
                                  capture_output=True, text=True)
    assert node_modules.returncode == 0, node_modules.stderr
    r = subprocess.run(["node", os.path.join(SRC, "tests/e2e/serve_openai.cjs"),
                        node_modules.stdout.strip(), server.url + "/v1", "secret", "chat"],
                       capture_output=True, text=True, timeout=120)
    print(r.stdout, end="")
    assert r.returncode == 0, r.stdout + r.stderr


def open_stream(server, body):
    """A raw streaming request whose response headers have arrived: (socket, first bytes)."""
    s = socket.create_connection((server.host, server.port), timeout=10)
    data = json.dumps({**body, "stream": True}).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    first = s.recv(4096)
    return s, first


def wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(what)


def check_slow_server(server):
    """--parallel 1 --max-queue 1, 30 ms a step: one request holds the slot for ~1 s."""
    long_ask = {"prompt": "NAME", "max_tokens": 27, "temperature": 1, "seed": 1}
    holder, first = open_stream(server, long_ask)
    assert b"200 OK" in first, first
    wait_for(lambda: server.metrics()["moe_slots_busy"] == 1, 5, "the first never took the slot")
    waiter, _ = open_stream(server, long_ask)  # headers come at once; it waits in the queue
    wait_for(lambda: server.metrics()["moe_queue_length"] == 1, 5, "the second never queued")
    head, error = expect_error(server, "/v1/completions", long_ask, 503, code="server_busy")
    assert head.get("Retry-After") == "1", head
    print("ok: a full queue: 503 with Retry-After")

    # Both clients leave: their requests end and the slot and queue empty within a few steps.
    cancelled = server.metrics()['moe_requests_finished_total{reason="cancelled"}']
    holder.close()
    waiter.close()
    wait_for(lambda: server.metrics()["moe_slots_busy"] == 0 and
             server.metrics()["moe_queue_length"] == 0, 1.0,
             "a client gone mid-stream kept its slot")
    assert server.metrics()['moe_requests_finished_total{reason="cancelled"}'] == cancelled + 2
    print("ok: clients gone mid-stream: requests cancelled, slot and queue free")

    # SIGTERM with a request running past --shutdown-timeout: cancelled, exit 0.
    running, _ = open_stream(server, long_ask)
    time.sleep(0.1)
    seconds = server.stop()
    running.settimeout(5)
    rest = b""
    try:
        while chunk := running.recv(65536):
            rest += chunk
    except OSError:
        pass
    assert b"shutting down" in rest or b"[DONE]" in rest, rest
    assert seconds < 5, seconds
    print(f"ok: SIGTERM: the running request cancelled after --shutdown-timeout, exit 0 in {seconds:.2f} s")


def load_test(server):
    """Many clients at once on 4 slots: mixed lengths, streamed and not, some leaving early,
    some malformed. Figures printed for bench/RESULTS.md."""
    rng = random.Random(5)
    kinds = ["whole", "stream"] * 4 + ["leave"] * 2 + ["malformed", "bad_type", "whole_long"]
    jobs = [(i, rng.choice(kinds), rng.randint(1, 24)) for i in range(120)]

    def one(job):
        i, kind, max_tokens = job
        ask = {"prompt": "NAME" + " x" * (i % 7), "max_tokens": max_tokens, "seed": i,
               "temperature": 0.8}
        start = time.time()
        if kind == "malformed":
            status, _, _ = server.request("POST", "/v1/completions", '{"prompt": "x", ')
            return kind, status == 400, time.time() - start
        if kind == "bad_type":
            status, _, _ = server.request("POST", "/v1/completions", {**ask, "n": "two"})
            return kind, status == 400, time.time() - start
        if kind == "leave":
            s, first = open_stream(server, {**ask, "max_tokens": 24})
            s.close()
            return kind, b"200 OK" in first, time.time() - start
        if kind == "stream":
            status, _, data = server.request("POST", "/v1/completions", {**ask, "stream": True})
            events = sse_events(data.decode())
            done = status == 200 and events[-1] == "[DONE]" and \
                json.loads(events[-2])["choices"][0]["finish_reason"] in ("stop", "length")
            return kind, done, time.time() - start
        if kind == "whole_long":
            ask["max_tokens"] = 26
        status, _, data = server.request("POST", "/v1/completions", ask)
        body = json.loads(data)
        done = status == 200 and body["choices"][0]["finish_reason"] in ("stop", "length") and \
            0 <= body["usage"]["completion_tokens"] <= ask["max_tokens"]
        return kind, done if done else (status, body), time.time() - start

    # A reader that never reads (a 4 KiB receive buffer) asks for much text: its 8 requests are
    # decoded to the end, and another client served, while nothing of it is read.
    sleeper = socket.socket()
    sleeper.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sleeper.connect((server.host, server.port))
    data = json.dumps({"prompt": "NAME", "max_tokens": 26, "n": 8, "logprobs": 5, "stream": True,
                       "moe": {"routes": True}, "temperature": 1}).encode()
    sleeper.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: " +
                    str(len(data)).encode() + b"\r\n\r\n" + data)
    start = time.time()
    status, _, answer = server.post("/v1/completions", {"prompt": "NAME", "max_tokens": 3})
    # Served whole: three tokens, or fewer when the sampler (no seed given) drew the end first.
    assert status == 200 and answer["choices"][0]["finish_reason"] in ("stop", "length") and \
        0 <= answer["usage"]["completion_tokens"] <= 3, answer
    wait_for(lambda: server.metrics()["moe_slots_busy"] == 0, 5,
             "a reader that never reads held its slots")
    sleeper.close()
    print(f"ok: a reader that never reads stalls nobody ({time.time() - start:.2f} s)")

    # Warm-up, then the memory level to come back to.
    list(concurrent.futures.ThreadPoolExecutor(8).map(one, jobs[:16]))
    warm_rss = server.rss_kib()
    start = time.time()
    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        results = list(pool.map(one, jobs))
    elapsed = time.time() - start
    failed = [(j, r) for j, r in zip(jobs, results) if not r[1]]
    assert not failed, f"requests without their whole answer: {failed[:5]}"
    wait_for(lambda: server.metrics()["moe_slots_busy"] == 0 and
             server.metrics()["moe_queue_length"] == 0, 5, "slots still held after the load")
    m = server.metrics()
    rss = server.rss_kib()
    assert rss < warm_rss * 1.25 + 16384, f"RSS {rss} KiB after the load, {warm_rss} KiB after warm-up"
    latencies = sorted(r[2] for r in results if r[0] in ("whole", "stream", "whole_long"))
    p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
    by_kind = {k: sum(1 for r in results if r[0] == k) for k in set(r[0] for r in results)}
    print(f"ok: load: {len(jobs)} requests from 24 clients in {elapsed:.2f} s, {by_kind}; "
          f"latency p50 {p50 * 1000:.0f} ms p99 {p99 * 1000:.0f} ms; "
          f"{m['moe_generated_tokens_total']:.0f} tokens, "
          f"{m['moe_decode_rows_total'] / max(1, m['moe_decode_steps_total']):.2f} rows per decode step; "
          f"RSS {warm_rss} -> {rss} KiB; no slot held")


def main():
    work = tempfile.mkdtemp(prefix="moe-serve-")
    servers = []
    try:
        run = make_run(work)
        plain = Server(work, "plain", "-m", run, "--parallel", "4", "--max-queue", "64",
                       "--threads", "1")
        servers.append(plain)
        check_completions(plain)
        check_errors(plain)
        load_test(plain)
        chat = Server(work, "chat", "-m", make_chat_folder(work), "--api-key", "secret",
                      "--max-body", "4096", "--threads", "1")
        servers.append(chat)
        check_chat_server(chat, work)
        # A GGUF file (llama.cpp's qwen2moe, quantized by llama-quantize): its own vocabulary,
        # no chat template in its metadata, so completions only; greedy text as `moe generate`.
        gguf = os.path.join(HF, "..", "gguf_models", "qwen2moe-q4_k_m.gguf")
        quantized = Server(work, "gguf", "-m", gguf, "--threads", "1")
        servers.append(quantized)
        status, _, answer = quantized.post("/v1/completions", {"prompt": "Sparse experts",
                                                               "max_tokens": 6, "temperature": 0})
        assert status == 200 and answer["usage"]["completion_tokens"] == 6, answer
        text = answer["choices"][0]["text"]
        generated = subprocess.run([MOE, "generate", "-m", gguf, "-p", "Sparse experts", "-n", "6",
                                    "--temperature", "0"], capture_output=True, check=True).stdout
        # The tiny vocabulary's byte tokens are not whole UTF-8: JSON carries U+FFFD for them,
        # the terminal the raw bytes. The ASCII pieces (tokNNN) name the tokens.
        ascii_text = "".join(c for c in text if c.isascii())
        ascii_generated = bytes(b for b in generated.rstrip(b"\n") if b < 128).decode()
        assert ascii_text and ascii_generated.endswith(ascii_text), (text, generated)
        expect_error(quantized, "/v1/chat/completions",
                     {"messages": [{"role": "user", "content": "hi"}]}, 400)
        print(f"ok: a GGUF file served, greedy as moe generate: {text!r}")
        slow = Server(work, "slow", "-m", run, "--parallel", "1", "--max-queue", "1",
                      "--debug-step-delay", "30", "--shutdown-timeout", "0.3", "--threads", "1")
        servers.append(slow)
        check_slow_server(slow)
        servers.remove(slow)
        for s in list(servers):
            s.stop()
            servers.remove(s)
        print("ok: SIGTERM on idle servers: exit 0")
        # Refused at start-up in one line: an unknown chat template.
        folder = os.path.join(work, "chat")
        with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
            json.dump({"chat_template": "{{ messages }}"}, f)
        r = subprocess.run([MOE, "serve", "-m", folder, "--port", "0"], capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, (r.returncode, r.stderr)
        assert "--chat-template" in r.stderr, r.stderr
        print(f"ok: refused: {r.stderr.strip()}")
    finally:
        for s in servers:
            s.proc.kill()
            s.proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    print("PASS")


if __name__ == "__main__":
    main()
