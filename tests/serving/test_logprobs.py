"""mode=serve scored the way lm-evaluation-harness scores a server: echo and logprobs on /v1/completions (text
and token-id prompts, batched, max_tokens 0 and 1) equal to transformers' log-probabilities of the same
weights, chat logprobs, vLLM's tokenizer endpoints, and bad values answered 400 with the server still serving.
The server is the real command over the hf_llama fixture's Hugging Face directory."""

import json
import urllib.request

import numpy as np
import pytest

openai = pytest.importorskip("openai", reason="make test installs the openai client")
torch = pytest.importorskip("torch", reason="make test installs torch")

MODEL = "tiny-llama"
TEXTS = ["The king speaks of love and death.", "Thou art my lord, fair queen", "Night"]


@pytest.fixture(scope="module")
def url(hf_llama, server, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("logprob_server") / "serve"
    overrides = (f"--config.finetune.init={hf_llama[0]}", f"--config.serve.model_name={MODEL}")
    with server(workdir, *overrides) as (url, _):
        yield url


@pytest.fixture
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)


def reference(hf_llama, ids: list[int]) -> np.ndarray:
    """transformers' log P(token p | tokens < p) for p >= 1, and its log-probabilities after each position."""
    with torch.no_grad():
        logits = hf_llama[1](torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, -1).numpy()
    return np.asarray([logp[p - 1, ids[p]] for p in range(1, len(ids))]), logp


def call(url, path, body=None):
    request = urllib.request.Request(
        url + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_echoed_prompts_score_as_transformers_for_text_and_token_ids(client, url, hf_llama):
    ids = call(url, "/tokenize", {"prompt": TEXTS[0]})[1]["tokens"]
    want, logp = reference(hf_llama, ids)
    by_text = client.completions.create(model=MODEL, prompt=TEXTS[0], echo=True, logprobs=3, max_tokens=0)
    by_ids = client.completions.create(
        model=MODEL, prompt=ids, echo=True, logprobs=3, max_tokens=1, temperature=0
    )
    for choice in (by_text.choices[0], by_ids.choices[0]):
        got = choice.logprobs
        assert got.token_logprobs[0] is None and got.top_logprobs[0] is None  # nothing predicts the first
        np.testing.assert_allclose(got.token_logprobs[1 : len(ids)], want, atol=1e-3)
        assert "".join(got.tokens[: len(ids)]) == TEXTS[0] and choice.text.startswith(TEXTS[0])
        assert got.text_offset[: len(ids)] == sorted(got.text_offset[: len(ids)]) and got.text_offset[0] == 0
        for p in range(1, len(ids)):
            top = list(got.top_logprobs[p].values())
            # most likely first; keyed by text, so ids of one text (partial UTF-8: U+FFFD) count once
            assert 1 <= len(top) <= 3 and top == sorted(top, reverse=True)
            np.testing.assert_allclose(top[0], logp[p - 1].max(), atol=1e-3)
    assert len(by_text.choices[0].logprobs.tokens) == len(ids) and by_text.usage.completion_tokens == 0
    generated = by_ids.choices[0].logprobs  # max_tokens=1: one greedy token after the prompt
    assert len(generated.tokens) == len(ids) + 1
    np.testing.assert_allclose(generated.token_logprobs[-1], logp[-1].max(), atol=1e-3)


def test_a_list_of_prompts_gets_one_choice_each_as_alone(client):
    batch = client.completions.create(model=MODEL, prompt=TEXTS, echo=True, logprobs=1, max_tokens=0)
    assert [c.index for c in batch.choices] == [0, 1, 2]
    for text, choice in zip(TEXTS, batch.choices, strict=True):
        alone = client.completions.create(model=MODEL, prompt=text, echo=True, logprobs=1, max_tokens=0)
        assert choice.logprobs.tokens == alone.choices[0].logprobs.tokens
        np.testing.assert_allclose(
            choice.logprobs.token_logprobs[1:], alone.choices[0].logprobs.token_logprobs[1:], atol=1e-5
        )


def test_generated_tokens_and_chat_answers_carry_their_log_probabilities(client, hf_llama, url):
    out = client.completions.create(model=MODEL, prompt=TEXTS[1], logprobs=2, max_tokens=5, temperature=0)
    got = out.choices[0].logprobs
    assert len(got.tokens) == out.usage.completion_tokens and "".join(got.tokens) == out.choices[0].text
    for lp, top in zip(got.token_logprobs, got.top_logprobs, strict=True):
        assert lp == pytest.approx(max(top.values()), abs=1e-6)  # greedy: the likeliest
    messages = [{"role": "user", "content": "Who is the king?"}]
    chat = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=6, temperature=0, logprobs=True, top_logprobs=2
    )
    content = chat.choices[0].logprobs.content
    assert "".join(t.token for t in content) == chat.choices[0].message.content
    assert all(
        len(t.top_logprobs) == 2 and t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob for t in content
    )
    prompt = call(url, "/tokenize", {"messages": messages})[1]["tokens"]
    answer = [call(url, "/tokenize", {"prompt": t.token})[1]["tokens"][0] for t in content[:1]]
    _, logp = reference(hf_llama, prompt)
    np.testing.assert_allclose(content[0].logprob, logp[-1][answer[0]], atol=1e-3)


def test_the_tokenizer_endpoints_answer_as_vllms(url, hf_llama):
    status, body = call(url, "/tokenize", {"prompt": TEXTS[0]})
    assert status == 200 and body["count"] == len(body["tokens"]) and body["max_model_len"] == 128
    assert call(url, "/detokenize", {"tokens": body["tokens"]})[1] == {"prompt": TEXTS[0]}
    chat = call(url, "/tokenize", {"messages": [{"role": "user", "content": "Hi"}]})[1]["tokens"]
    assert len(chat) > 2
    info = call(url, "/tokenizer_info")[1]
    assert info["eos_token"] == "<|im_end|>" and info["chat_template"] and info["vocab_size"] > 256


BAD = {
    "logprobs above the limit": ("/v1/completions", {"prompt": "Hi", "logprobs": 21, "max_tokens": 1}),
    "a token id outside the vocabulary": ("/v1/completions", {"prompt": [1, 99999], "max_tokens": 1}),
    "max_tokens 0 without echo": ("/v1/completions", {"prompt": "Hi", "max_tokens": 0}),
    "logprobs while streaming": ("/v1/completions", {"prompt": "Hi", "logprobs": 1, "stream": True}),
    "top_logprobs without logprobs": (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "Hi"}], "top_logprobs": 2},
    ),
    "detokenize outside the vocabulary": ("/detokenize", {"tokens": [-1]}),
    "tokenize neither prompt nor messages": ("/tokenize", {}),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_values_answer_400_and_the_server_keeps_serving(url, case):
    path, body = BAD[case]
    status, got = call(url, path, {"model": MODEL} | body)
    assert status == 400 and set(got["error"]) == {"message", "type", "param", "code"}, got
    good = {"model": MODEL, "prompt": "Hi", "max_tokens": 2, "echo": True, "logprobs": 1}
    assert call(url, "/v1/completions", good)[0] == 200
