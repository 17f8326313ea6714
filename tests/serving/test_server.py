"""mode=serve through the official `openai` client and raw HTTP: completions and chat, streamed and not;
16 concurrent greedy requests answered exactly as each alone; seeds; stop strings; every bad request (status,
OpenAI error body, and the server still serving); the API key; a full queue; a client that goes away; SIGTERM.
Each server is the real command (`python -m lmjax.main --config.mode=serve`) on a free 127.0.0.1 port."""

import http.client
import json
import signal
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

openai = pytest.importorskip("openai", reason="make test installs the openai client")

KEY = "test-key-0123"
MODEL = "tiny-chat"  # the workdir's name
PROMPTS = [f"{w} the king" for w in ("What", "Speak", "Lord", "Fair", "My", "Thou", "Noble", "The")] + [
    f"QUEEN:\n{w}" for w in ("heart", "night", "day", "love", "death", "sword", "crown", "lady")
]


@pytest.fixture(scope="module")
def url(chat_workdir, server):
    with server(chat_workdir, env={"LMJAX_API_KEY": KEY}) as (url, _):
        yield url


@pytest.fixture
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=120)


def complete(client, prompt, **kw):
    kw = dict(max_tokens=20, temperature=0.0) | kw
    return client.completions.create(model=MODEL, prompt=prompt, **kw)


def test_completions_and_chat_streamed_and_not(client):
    whole = complete(client, PROMPTS[0])
    assert whole.choices[0].finish_reason in ("length", "stop") and whole.usage.completion_tokens >= 1
    assert whole.usage.prompt_tokens >= 2 and whole.model == MODEL
    streamed = list(complete(client, PROMPTS[0], stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in streamed[:-1]) == whole.choices[0].text
    assert streamed[-2].choices[0].finish_reason == whole.choices[0].finish_reason
    assert streamed[-1].choices == [] and streamed[-1].usage == whole.usage
    messages = [{"role": "user", "content": "Who is the king?"}]
    chat = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, temperature=0.0)
    assert chat.choices[0].message.role == "assistant" and chat.object == "chat.completion"
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=12, temperature=0, stream=True
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == chat.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == chat.choices[0].finish_reason
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_sixteen_concurrent_greedy_requests_get_their_solo_answers(client, url):
    solo = [complete(client, p, max_tokens=24).choices[0].text for p in PROMPTS]
    before = json.load(urllib.request.urlopen(f"{url}/health"))
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda p: complete(client, p, max_tokens=24).choices[0].text, PROMPTS))
    assert together == solo
    assert len(set(solo)) > 1  # the prompts lead somewhere different
    after = json.load(urllib.request.urlopen(f"{url}/health"))
    assert after["finished"] - before["finished"] == 16 and after["busy"] == 0


def test_a_seed_repeats_a_sampled_answer_and_stop_strings_cut_it(client):
    a, b = (complete(client, PROMPTS[1], temperature=1.0, top_p=0.9, seed=7, max_tokens=30) for _ in range(2))
    assert a.choices[0].text == b.choices[0].text
    greedy = complete(client, PROMPTS[2], max_tokens=30).choices[0].text
    stop = greedy[5:8]
    cut = complete(client, PROMPTS[2], max_tokens=30, stop=[stop, "never-seen"])
    assert cut.choices[0].text == greedy[: greedy.index(stop)] and cut.choices[0].finish_reason == "stop"
    streamed = complete(client, PROMPTS[2], max_tokens=30, stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == greedy[: greedy.index(stop)]


def post(url, body: bytes, path="/v1/completions", headers=None):
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"} | (headers or {})
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request("POST", path, body=body, headers={k: v for k, v in headers.items() if v is not None})
    response = conn.getresponse()
    return response.status, json.loads(response.read() or b"{}")


GOOD = {"model": MODEL, "prompt": "KING:", "max_tokens": 4, "temperature": 0}
BAD = {
    "malformed JSON": (b'{"model": "tiny-chat", "prompt": "KI', 400, "invalid_json"),
    "non-UTF-8 bytes": (b'{"model": "tiny-chat", "prompt": "\xff\xfe"}', 400, "invalid_json"),
    "wrong type": (json.dumps(GOOD | {"max_tokens": "4"}).encode(), 400, "invalid_value"),
    "wrong type (temperature)": (json.dumps(GOOD | {"temperature": "hot"}).encode(), 400, "invalid_value"),
    "missing prompt": (json.dumps({"model": MODEL}).encode(), 400, "invalid_value"),
    "negative max_tokens": (json.dumps(GOOD | {"max_tokens": -3}).encode(), 400, "invalid_value"),
    "huge max_tokens": (json.dumps(GOOD | {"max_tokens": 10**12}).encode(), 400, "invalid_value"),
    "prompt + max_tokens too long": (
        json.dumps(GOOD | {"max_tokens": 60}).encode(),
        400,
        "context_length_exceeded",
    ),
    "prompt longer than the context": (
        json.dumps(GOOD | {"prompt": "the king " * 80}).encode(),
        400,
        "context_length_exceeded",
    ),
    "empty prompt": (json.dumps(GOOD | {"prompt": ""}).encode(), 400, "empty_prompt"),
    "unknown model": (json.dumps(GOOD | {"model": "gpt-9"}).encode(), 404, "model_not_found"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_request_gets_an_openai_error_and_the_next_good_one_succeeds(url, case):
    body, status, code = BAD[case]
    got_status, got = post(url, body)
    assert got_status == status, got
    assert set(got["error"]) == {"message", "type", "param", "code"} and got["error"]["code"] == code
    assert got["error"]["message"]
    ok_status, ok = post(url, json.dumps(GOOD).encode())
    assert ok_status == 200 and ok["choices"][0]["finish_reason"] in ("length", "stop")


def test_the_api_key_is_required_when_set(url):
    assert post(url, json.dumps(GOOD).encode(), headers={"Authorization": None})[0] == 401
    status, body = post(url, json.dumps(GOOD).encode(), headers={"Authorization": "Bearer wrong"})
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
    assert post(url, json.dumps(GOOD).encode())[0] == 200
    assert json.load(urllib.request.urlopen(f"{url}/health"))["status"] == "ok"  # health needs no key


def test_a_non_loopback_host_without_a_key_is_refused_before_loading(chat_config, monkeypatch, tmp_path):
    from lmjax.errors import InputError
    from lmjax.modes import serve as serve_mode

    monkeypatch.delenv("LMJAX_API_KEY", raising=False)
    chat_config.serve.host = "0.0.0.0"
    with pytest.raises(InputError) as refused:
        serve_mode.run(chat_config, tmp_path / "no-run-needed")
    assert str(refused.value) == (
        "serve.host='0.0.0.0' is reachable from other machines: put an API key in the environment "
        "variable LMJAX_API_KEY (clients send 'Authorization: Bearer <key>') or serve on 127.0.0.1"
    )


def test_a_busy_server_503s_a_full_queue_frees_a_gone_clients_slot_and_stops_on_sigterm(chat_workdir, server):
    with server(chat_workdir, "--config.serve.slots=1", "--config.serve.max_queue=1") as (url, proc):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)

        def ask(prompt):
            try:
                return complete(client, prompt, max_tokens=40).choices[0].text
            except openai.APIStatusError as e:
                return e.status_code, e.body

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, PROMPTS[:8]))
        refused = [a for a in answers if isinstance(a, tuple)]
        assert refused and all(status == 503 and body["code"] == "server_busy" for status, body in refused)
        assert len(refused) < 8 and all(isinstance(a, str) and a for a in answers if a not in refused)

        # a streaming client that reads one chunk and hangs up: the engine drops its request
        before = json.load(urllib.request.urlopen(f"{url}/health"))["tokens"]
        stream = complete(client, PROMPTS[0], max_tokens=50, stream=True)
        next(iter(stream))
        stream.close()
        deadline = time.monotonic() + 30
        while (health := json.load(urllib.request.urlopen(f"{url}/health")))["cancelled"] < 1:
            assert time.monotonic() < deadline, health
            time.sleep(0.05)
        assert health["busy"] == 0 and health["tokens"] < before + 50, health

        # SIGTERM while a stream is in flight: it finishes, then the server exits 0
        expected = complete(client, PROMPTS[3], max_tokens=50).choices[0].text
        chunks = iter(complete(client, PROMPTS[3], max_tokens=50, stream=True))
        first = next(chunks)
        threading.Timer(0.0, proc.send_signal, (signal.SIGTERM,)).start()
        rest = list(chunks)
        assert first.choices[0].text + "".join(c.choices[0].text for c in rest) == expected
        assert proc.wait(timeout=60) == 0
        with pytest.raises(OSError):
            urllib.request.urlopen(f"{url}/health", timeout=2)


@pytest.mark.parametrize(
    "host, loopback",
    [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("localhost", True), ("0.0.0.0", False)]
    + [("10.1.2.3", False), ("::", False), ("example.com", False)],
)
def test_which_hosts_need_an_api_key(host, loopback):
    from lmjax.serving import server

    assert server.is_loopback(host) == loopback
