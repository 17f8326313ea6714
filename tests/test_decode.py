import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmjax import decode
from lmjax.models.decoder import DecoderLM


@pytest.fixture
def model():
    return DecoderLM(vocab_size=13, num_layers=2, num_heads=2, d_model=16, d_ff=32, max_len=8, rngs=nnx.Rngs(0))


def greedy_reference(model, prompt, n):
    tokens = list(prompt)
    for _ in range(n):
        ctx = jnp.asarray([tokens[-model.max_len:]])
        tokens.append(int(jnp.argmax(model(ctx)[0, -1])))
    return tokens


def test_greedy_matches_step_by_step_forward_past_the_model_length(model):
    graphdef, params = nnx.split(model)
    prompt = np.array([[1, 5, 7]], np.int32)
    out = decode.generate(graphdef, params, prompt, jax.random.PRNGKey(0), num_tokens=12, temperature=0.0)
    assert out.shape == (1, 15)
    assert list(np.asarray(out[0])) == greedy_reference(model, [1, 5, 7], 12)


def test_top_k_one_is_greedy_and_top_k_limits_choices(model):
    graphdef, params = nnx.split(model)
    prompt = np.array([[2, 3]], np.int32)
    greedy = decode.generate(graphdef, params, prompt, jax.random.PRNGKey(0), num_tokens=6, temperature=0.0)
    top1 = decode.generate(graphdef, params, prompt, jax.random.PRNGKey(1), num_tokens=6, temperature=1.5, top_k=1)
    np.testing.assert_array_equal(greedy, top1)
    logits = jnp.asarray([[0.0, 1.0, 2.0, 3.0, 4.0]])
    draws = {int(decode.sample_logits(jax.random.PRNGKey(i), logits, 1.0, 2)[0]) for i in range(200)}
    assert draws == {3, 4}


def test_bad_sampling_arguments_fail_clearly(model):
    graphdef, params = nnx.split(model)
    with pytest.raises(ValueError, match="prompt is empty"):
        decode.generate(graphdef, params, np.zeros((1, 0), np.int32), jax.random.PRNGKey(0), num_tokens=2)
    with pytest.raises(ValueError, match="temperature=-1.0 is negative"):
        decode.generate(graphdef, params, np.ones((1, 1), np.int32), jax.random.PRNGKey(0), num_tokens=2, temperature=-1.0)
