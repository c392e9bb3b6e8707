"""`paperclub serve` through the real `openai` client: what the offline API gives, streamed or not, many requests
at once; OpenAI's error schema for every bad input; disconnects, queue limits and SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time

import httpx
import openai
import pytest

from paperclub.engine import LLM, SamplingParams
from tests.serve.conftest import API_KEY, start_server

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a Python function that reverses a string."}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name three primary colours."}],
    [{"role": "user", "content": "Solve: 12 * 7 + 5 = ?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [{"role": "user", "content": "Explain recursion to a child."}],
]


@pytest.fixture(scope="module")
def offline(default_model_dir):
    llm = LLM(model=str(default_model_dir), device="cpu")
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


def alone(offline: LLM, prompt, **params) -> object:
    (out,) = offline.generate([prompt], SamplingParams(**params))
    return out


def test_models_health_and_metrics(server, client):
    assert [m.id for m in client.models.list().data] == ["smol"]
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("paperclub:num_requests_running", "paperclub:num_requests_waiting", "paperclub:prompt_tokens_total",
                 "paperclub:generation_tokens_total", "paperclub:time_to_first_token_seconds_bucket",
                 "paperclub:inter_token_latency_seconds_bucket", "paperclub:spec_decode_num_accepted_tokens_total",
                 "paperclub:ssd_speculation_cache_hits_total", "paperclub:draft_fallbacks_total",
                 "paperclub:spec_decode_num_ngram_drafts_total"):
        assert name in text


def test_speculation_counters_add_what_each_sequence_gained():
    from prometheus_client import generate_latest

    from paperclub.serve.metrics import Metrics

    m = Metrics("smol")
    stats = {"num_drafts": 4, "num_draft_tokens": 20, "num_accepted_tokens": 7, "num_ngram_drafts": 3,
             "num_accepted_tokens_per_pos": [3, 2, 1, 1, 0]}
    m.speculation(stats, {"num_drafts": 1, "num_ngram_drafts": 1, "num_accepted_tokens_per_pos": [1]})
    text = generate_latest(m.registry).decode()
    for name, value in (("spec_decode_num_drafts", 3), ("spec_decode_num_ngram_drafts", 2),
                        ("spec_decode_num_accepted_tokens", 7)):
        assert f'paperclub:{name}_total{{model_name="smol"}} {value:.1f}' in text, name
    assert 'paperclub:spec_decode_num_accepted_tokens_per_pos_total{model_name="smol",position="0"} 2.0' in text


def test_chat_greedy_equals_the_offline_api_streamed_or_not(client, offline):
    prompt = PROMPTS[0]
    want = alone(offline, prompt, max_tokens=24, temperature=0)
    r = client.chat.completions.create(model="smol", messages=prompt, max_tokens=24, temperature=0)
    assert r.choices[0].message.content == want.text and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == want.finish_reason
    assert r.usage.prompt_tokens == len(want.prompt_token_ids)
    assert r.usage.completion_tokens == len(want.token_ids)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    chunks = list(client.chat.completions.create(model="smol", messages=prompt, max_tokens=24, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == want.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(want.token_ids)


def test_completions_take_text_and_token_ids(client, offline):
    want = alone(offline, "The capital of France is", max_tokens=12, temperature=0)
    r = client.completions.create(model="smol", prompt="The capital of France is", max_tokens=12, temperature=0)
    assert r.choices[0].text == want.text and r.usage.completion_tokens == len(want.token_ids)
    ids = offline.encode("The capital of France is")
    r = client.completions.create(model="smol", prompt=ids, max_tokens=12, temperature=0)
    assert r.choices[0].text == want.text
    two = client.completions.create(model="smol", prompt=["The capital of France is", "1, 2, 3,"], max_tokens=12,
                                    temperature=0)
    assert [c.index for c in two.choices] == [0, 1] and two.choices[0].text == want.text
    assert two.choices[1].text == alone(offline, "1, 2, 3,", max_tokens=12, temperature=0).text
    streamed = client.completions.create(model="smol", prompt="The capital of France is", max_tokens=12,
                                         temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == want.text


def test_concurrent_greedy_streams_are_token_identical_to_each_prompt_alone(server, offline):
    """Six clients at once share the running batch; each gets exactly what its prompt gives alone."""
    want = [alone(offline, p, max_tokens=40, temperature=0).text for p in PROMPTS]

    async def main():
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)

        async def one(p):
            stream = await client.chat.completions.create(model="smol", messages=p, max_tokens=40, temperature=0,
                                                          stream=True)
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

        return await asyncio.gather(*(one(p) for p in PROMPTS))

    assert asyncio.run(main()) == want


def test_a_new_request_joins_the_running_batch(server, client):
    """A short request sent while a long one streams finishes first: it joined the batch at the next step rather
    than waiting for the long one (no lock around generate)."""
    done: dict[str, float] = {}

    def long_request():
        client.completions.create(model="smol", prompt="Once upon a time", max_tokens=300, temperature=0,
                                  extra_body={"ignore_eos": True})
        done["long"] = time.monotonic()

    t = threading.Thread(target=long_request)
    t.start()
    deadline = time.monotonic() + 60
    while server.metric("paperclub:num_requests_running") < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    client.completions.create(model="smol", prompt="Hi", max_tokens=4, temperature=0, extra_body={"ignore_eos": True})
    done["short"] = time.monotonic()
    t.join()
    assert done["short"] < done["long"]


def test_seeded_sampling_is_reproducible_and_matches_the_offline_api(client, offline):
    prompt = PROMPTS[4]
    kwargs = dict(model="smol", messages=prompt, max_tokens=20, temperature=0.9, top_p=0.95, seed=1234, n=3)
    a = client.chat.completions.create(**kwargs)
    b = client.chat.completions.create(**kwargs)
    texts = [c.message.content for c in a.choices]
    assert texts == [c.message.content for c in b.choices]
    assert len(set(texts)) > 1  # the n choices differ from one another
    for i, text in enumerate(texts):  # choice i samples with seed + i
        assert text == alone(offline, prompt, max_tokens=20, temperature=0.9, top_p=0.95, seed=1234 + i).text
    top_k = client.chat.completions.create(model="smol", messages=prompt, max_tokens=20, temperature=0.9, seed=7,
                                           extra_body={"top_k": 5})
    assert top_k.choices[0].message.content == alone(offline, prompt, max_tokens=20, temperature=0.9, seed=7,
                                                     top_k=5).text


def test_stop_strings_are_never_emitted(client, offline):
    prompt = "Count: 1, 2, 3, 4,"
    full = alone(offline, prompt, max_tokens=30, temperature=0).text
    assert " 7," in full  # the stop string is where we expect it
    r = client.completions.create(model="smol", prompt=prompt, max_tokens=30, temperature=0, stop=[" 7,"])
    assert r.choices[0].text == full[: full.index(" 7,")] and r.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model="smol", prompt=prompt, max_tokens=30, temperature=0, stop=" 7,",
                                         stream=True)
    pieces = [c.choices[0].text for c in streamed]
    assert "".join(pieces) == r.choices[0].text and not any("7" in p for p in pieces)


def test_logprobs_chat_and_completions(client, offline):
    prompt = PROMPTS[3]
    want = alone(offline, prompt, max_tokens=8, temperature=0, logprobs=2)
    r = client.chat.completions.create(model="smol", messages=prompt, max_tokens=8, temperature=0, logprobs=True,
                                       top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert len(content) == len(want.token_ids)
    for item, token, (lp, top) in zip(content, want.token_ids, want.logprobs, strict=True):
        assert item.token == offline.tokenizer.decode([token])
        assert item.logprob == pytest.approx(lp, abs=1e-5)
        assert [t.logprob for t in item.top_logprobs] == pytest.approx([v for _, v in top], abs=1e-5)
        assert item.top_logprobs[0].token == item.token  # greedy: the sampled token is the most likely one
        assert item.bytes == list(item.token.encode())
    c = client.completions.create(model="smol", prompt="The sky is", max_tokens=5, temperature=0, logprobs=3)
    lp = c.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    assert "".join(lp.tokens) == c.choices[0].text and lp.text_offset[0] == 0
    assert all(len(t) == 3 and max(t.values()) == pytest.approx(v) for t, v in zip(lp.top_logprobs,
                                                                                     lp.token_logprobs, strict=True))


# -- errors ------------------------------------------------------------------------------------------------------

def post(server, path: str, body, key: str | None = API_KEY, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if isinstance(body, str | bytes):
        return httpx.post(f"{server.url}{path}", content=body, headers={**headers, "Content-Type":
                                                                          "application/json"}, timeout=60, **kw)
    return httpx.post(f"{server.url}{path}", json=body, headers=headers, timeout=60, **kw)


HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("body, status, param", [
    ("{not json", 400, None),
    ("[1, 2]", 400, None),
    ({"messages": HI, "temperature": "hot"}, 400, "temperature"),
    ({"messages": HI, "temperature": 3}, 400, "temperature"),
    ({"messages": HI, "top_p": 0}, 400, "top_p"),
    ({"messages": HI, "max_tokens": 0}, 400, "max_tokens"),
    ({"messages": HI, "max_tokens": 10**6}, 400, "max_tokens"),
    ({"messages": HI, "n": 0}, 400, "n"),
    ({"messages": HI, "top_logprobs": 2}, 400, "top_logprobs"),
    ({"messages": HI, "logprobs": True, "top_logprobs": 21}, 400, "top_logprobs"),
    ({"messages": HI, "frequency_penalty": 1.0}, 400, "frequency_penalty"),
    ({"messages": HI, "stream_options": {"include_usage": True}}, 400, "stream_options"),
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages.0.role"),
    ({"messages": [{"role": "user", "content": "word " * 9000}]}, 400, "messages"),
    ({"model": "gpt-4", "messages": HI}, 404, "model"),
])
def test_bad_chat_requests_get_openai_errors(server, body, status, param):
    r = post(server, "/v1/chat/completions", body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["param"] == param and err["message"]
    if param:
        assert param.split(".")[0] in err["message"] or "prompt" in err["message"] or "model" in err["message"]


@pytest.mark.parametrize("body, param", [
    ({"prompt": [1, 2, 10**9]}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": "x", "logprobs": 21}, "logprobs"),
    ({"prompt": "x", "echo": True}, "echo"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
])
def test_bad_completion_requests_get_openai_errors(server, body, param):
    r = post(server, "/v1/completions", body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_the_openai_client_sees_typed_errors(client):
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="smol", messages=HI, temperature=-1)
    with pytest.raises(openai.NotFoundError, match="gpt-4"):
        client.chat.completions.create(model="gpt-4", messages=HI)


def test_api_key_is_required(server):
    assert post(server, "/v1/chat/completions", {"messages": HI}, key=None).status_code == 401
    r = post(server, "/v1/chat/completions", {"messages": HI}, key="wrong")
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    bad = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    assert httpx.get(f"{server.url}/health").status_code == 200  # health and metrics need no key


def test_oversized_bodies_and_unknown_routes(server):
    r = post(server, "/v1/completions", b'{"prompt": "' + b"a" * (5 << 20) + b'"}')
    assert r.status_code == 413 and "larger than" in r.json()["error"]["message"]
    r = httpx.get(f"{server.url}/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


def test_a_client_that_disconnects_mid_stream_is_aborted(server):
    aborted = server.metric("paperclub:request_success_total", finished_reason="abort")
    body = {"prompt": "Once upon a time", "max_tokens": 2000, "temperature": 0, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body,
                      headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as r:
        data = 0
        for line in r.iter_lines():
            data += line.startswith("data: {")
            if data == 3:
                break  # leaving the block closes the connection mid-stream
    assert data == 3
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and server.metric("paperclub:num_requests_running") > 0:
        time.sleep(0.05)
    assert server.metric("paperclub:num_requests_running") == 0
    assert server.metric("paperclub:request_success_total", finished_reason="abort") == aborted + 1


def test_the_chat_page_is_served(server):
    r = httpx.get(server.url + "/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "/v1/chat/completions" in r.text and "tok/s" in r.text


# -- a server of its own: the queue limit and SIGTERM -----------------------------------------------------------------

@pytest.fixture
def small_server(default_model_dir, tmp_path):
    s = start_server(default_model_dir, tmp_path / "small.log", "--max-num-seqs", "1", "--max-queue", "0")
    yield s
    s.stop()


def stream_in_background(url: str, body: dict) -> tuple[threading.Thread, list[str]]:
    lines: list[str] = []

    def run():
        with httpx.stream("POST", url, json=body, timeout=120) as r:
            lines.extend(r.iter_lines())

    t = threading.Thread(target=run)
    t.start()
    return t, lines


def wait_running(server, n: int = 1) -> None:
    deadline = time.monotonic() + 60
    while server.metric("paperclub:num_requests_running") < n:
        assert time.monotonic() < deadline, "the request never started"
        time.sleep(0.05)


def test_a_full_queue_gets_429_with_retry_after_and_sigterm_drains(small_server):
    s = small_server
    body = {"prompt": "Once upon a time", "max_tokens": 150, "temperature": 0, "stream": True, "ignore_eos": True}
    t, lines = stream_in_background(f"{s.url}/v1/completions", body)
    wait_running(s)
    r = post(s, "/v1/completions", {"prompt": "hi", "max_tokens": 2}, key=None)
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == "queue_full"
    s.process.send_signal(signal.SIGTERM)  # drain: the running stream finishes, new requests get 503
    deadline = time.monotonic() + 10
    while (h := httpx.get(f"{s.url}/health")).status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert h.status_code == 503
    r = post(s, "/v1/completions", {"prompt": "hi", "max_tokens": 2}, key=None)
    assert r.status_code == 503 and r.json()["error"]["code"] == "draining"
    t.join(120)
    events = [json.loads(x[6:]) for x in lines if x.startswith("data: {")]
    assert lines[-1] == "data: [DONE]" or [x for x in lines if x][-1] == "data: [DONE]"
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    assert s.process.wait(30) == 0
    assert "Traceback" not in s.log.read_text()


def test_serve_refuses_a_port_in_use_before_loading(default_model_dir, tmp_path):
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "paperclub.cli", "serve", "--model", str(default_model_dir),
                            "--port", str(port)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "in use" in r.stderr


def test_serve_refuses_a_negative_prefix_cache_size(default_model_dir):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "paperclub.cli", "serve", "--model", str(default_model_dir),
                        "--prefix-cache-mb", "-1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "--prefix-cache-mb" in r.stderr


def test_a_repeated_prompt_is_served_from_the_prefix_cache(server, client, offline):
    prompt = [{"role": "user", "content": "Name three rivers of Europe and one fact about each of them."}]
    want = alone(offline, prompt, max_tokens=16, temperature=0)
    n = len(want.prompt_token_ids)
    client.chat.completions.create(model="smol", messages=prompt, max_tokens=16, temperature=0)
    queries, hits = server.metric("paperclub:prefix_cache_queries_total"), server.metric(
        "paperclub:prefix_cache_hits_total")
    r = client.chat.completions.create(model="smol", messages=prompt, max_tokens=16, temperature=0)
    assert r.choices[0].message.content == want.text  # the same reply from cached K/V
    assert r.usage.prompt_tokens_details.cached_tokens == n - 1  # OpenAI's field for it
    assert server.metric("paperclub:prefix_cache_queries_total") - queries == n
    # every token but the last: the first reply completed the block the prompt ends in
    assert server.metric("paperclub:prefix_cache_hits_total") - hits == n - 1
    assert server.metric("paperclub:prefix_cache_bytes") > 0
    chunks = list(client.chat.completions.create(model="smol", messages=prompt, max_tokens=16, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want.text
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == n - 1


# -- paperclub loadtest ------------------------------------------------------------------------------------------------

def test_loadtest_contract(server, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "load.json"
    r = subprocess.run([sys.executable, "-m", "paperclub.cli", "loadtest", "--base-url", f"{server.url}/v1",
                        "--api-key", API_KEY, "--concurrency", "4", "--duration", "3", "--max-tokens", "12",
                        "--num-prompts", "3", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    for key in ("requests_ok", "requests_failed", "output_tokens_per_s", "ttft_p50_s", "ttft_p99_s", "itl_p50_s",
                "itl_p99_s", "mismatched"):
        assert key in result
    assert result["requests_ok"] >= 4 and result["requests_failed"] == 0 and result["mismatched"] == 0
    assert result["mismatch_checked"] == result["requests_ok"]
    assert result["output_tokens_per_s"] > 0 and 0 < result["ttft_p50_s"] <= result["ttft_p99_s"]
    assert 0 < result["itl_p50_s"] <= result["itl_p99_s"]
    assert "api_key" not in result["settings"]


def test_loadtest_counts_a_response_that_differs_from_its_reference():
    from paperclub.serve.loadtest import LoadTest, Outcome, summarize

    test = LoadTest(base_url="http://127.0.0.1:1/v1", concurrency=1, duration_s=1, max_tokens=4)
    outcomes = [Outcome(0, True, "abc", 3, 0.1, [0.01]), Outcome(1, True, "xyz", 3, 0.2, [0.02]),
                Outcome(0, False, error="HTTP 500")]
    result = summarize(test, "m", outcomes, {0: "abc", 1: "xy"}, wall=2.0)
    assert (result["requests_ok"], result["requests_failed"], result["mismatched"]) == (2, 1, 1)
    assert result["output_tokens_per_s"] == 3.0 and result["errors"] == ["HTTP 500"]


@pytest.mark.parametrize("url", ["http://10.1.2.3:8000/v1", "http://example.com/v1"])
def test_loadtest_refuses_addresses_off_loopback(url, capsys):
    from paperclub.cli import main

    assert main(["loadtest", "--base-url", url, "--concurrency", "1", "--duration", "1", "--max-tokens", "1"]) == 2
    assert "loopback" in capsys.readouterr().err
