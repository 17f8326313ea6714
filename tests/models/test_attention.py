import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax.errors import InputError
from lmjax.models import attention
from lmjax.models.attention import Mask

B, L, H, K = 2, 128, 4, 16


def reference(q, k, v, mask: Mask, scale: float, bias=None) -> np.ndarray:
    """float64 NumPy attention."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    group = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
    logits = np.einsum("blhk,bshk->bhls", q, k) * scale
    if bias is not None:
        logits = logits + np.asarray(bias, np.float64)
    keep = mask.dense(q.shape[1], k.shape[1])
    if keep is not None:
        logits = np.where(np.asarray(keep), logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    return np.einsum("bhls,bshk->blhk", probs / probs.sum(-1, keepdims=True), v)


def qkv(kv_heads: int):
    q = jax.random.normal(jax.random.PRNGKey(0), (B, L, H, K))
    k, v = (jax.random.normal(jax.random.PRNGKey(i), (B, L, kv_heads, K)) for i in (1, 2))
    return q, k, v


def packed_ids() -> jnp.ndarray:
    """Row 0: three documents and padding; row 1: one document, no padding."""
    row0 = np.r_[np.full(40, 1), np.full(30, 2), np.full(45, 3), np.zeros(13)]
    return jnp.asarray(np.stack([row0, np.ones(L)]), jnp.int32)


MASKS = {
    "none": lambda: Mask(),
    "causal": lambda: Mask(causal=True),
    "documents": lambda: Mask(packed_ids(), packed_ids()),
    "causal documents": lambda: Mask(packed_ids(), packed_ids(), causal=True),
}


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("mask_name", list(MASKS))
def test_every_implementation_that_runs_here_equals_the_reference(mask_name, kv_heads):
    """einsum, xla and splash (the Pallas kernel in interpret mode) against float64 NumPy, for causal and
    document masks with padding, and grouped-query / multi-query heads. Padding queries' outputs are not
    compared (nothing reads them)."""
    q, k, v, mask = *qkv(kv_heads), MASKS[mask_name]()
    ref = reference(q, k, v, mask, 0.25)
    real = np.asarray(packed_ids() > 0)[..., None, None] if mask.q_ids_BL is not None else True
    outs = {name: attention.attend(name, q, k, v, mask, scale=0.25) for name in ("einsum", "xla", "auto")}
    outs["splash"] = jax.jit(lambda q, k, v: attention.splash(q, k, v, mask, 0.25, interpret=True))(q, k, v)
    for name, out in outs.items():
        np.testing.assert_allclose(np.where(real, out, 0), np.where(real, ref, 0), atol=2e-5, err_msg=name)


def test_splash_gradients_equal_einsums():
    q, k, v = qkv(2)
    mask = MASKS["causal documents"]()
    real = (packed_ids() > 0)[..., None, None]

    def loss(fn):
        return lambda q, k, v: jnp.sum(jnp.where(real, fn(q, k, v), 0.0) ** 2)

    splash = jax.grad(loss(lambda q, k, v: attention.splash(q, k, v, mask, 0.25, interpret=True)), (0, 1, 2))
    einsum = jax.grad(loss(lambda q, k, v: attention.einsum(q, k, v, mask, 0.25)), (0, 1, 2))
    for got, want in zip(jax.jit(splash)(q, k, v), einsum(q, k, v), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention runs on GPUs")
@pytest.mark.parametrize("kv_heads", [4, 1])
@pytest.mark.parametrize("mask_name", list(MASKS))
def test_cudnn_outputs_and_gradients_equal_einsums_on_gpus(mask_name, kv_heads):
    """cuDNN's kernel in bfloat16 against einsum attention in float32 on the same (bf16-rounded) inputs."""
    q, k, v = (x.astype(jnp.bfloat16) for x in qkv(kv_heads))
    mask = MASKS[mask_name]()
    real = (packed_ids() > 0)[..., None, None] if mask.q_ids_BL is not None else True

    def loss(name, dtype):
        def f(q, k, v):
            out = attention.attend(name, q.astype(dtype), k.astype(dtype), v.astype(dtype), mask, scale=0.25)
            return jnp.sum(jnp.where(real, out.astype(jnp.float32), 0.0) ** 2), out

        return jax.jit(jax.value_and_grad(f, (0, 1, 2), has_aux=True))

    (_, got), got_grads = loss("cudnn", jnp.bfloat16)(q, k, v)
    (_, want), want_grads = loss("einsum", jnp.float32)(q, k, v)
    np.testing.assert_allclose(np.where(real, got.astype(jnp.float32), 0), np.where(real, want, 0), atol=2e-2)
    for g, w in zip(got_grads, want_grads, strict=True):
        np.testing.assert_allclose(g.astype(jnp.float32), w.astype(jnp.float32), atol=5e-2, rtol=5e-2)


@pytest.mark.skipif(jax.default_backend() != "tpu", reason="the splash kernel compiles for TPUs")
@pytest.mark.parametrize("kv_heads", [4, 1])
@pytest.mark.parametrize("mask_name", ["causal", "causal documents"])
def test_splash_kernel_outputs_and_gradients_equal_einsums_on_tpus(mask_name, kv_heads):
    """The compiled kernel (not interpret mode) against the float64 reference, and its gradients against
    einsum attention's; tolerances of the TPU's default matmul precision (bf16 passes)."""
    q, k, v = qkv(kv_heads)
    mask = MASKS[mask_name]()
    real = (packed_ids() > 0)[..., None, None] if mask.q_ids_BL is not None else True
    got = jax.jit(lambda q, k, v: attention.splash(q, k, v, mask, 0.25))(q, k, v)
    ref = reference(q, k, v, mask, 0.25)
    np.testing.assert_allclose(np.where(real, got, 0), np.where(real, ref, 0), atol=2e-2)

    def loss(fn):
        return lambda q, k, v: jnp.sum(jnp.where(real, fn(q, k, v), 0.0) ** 2)

    splash = jax.grad(loss(lambda q, k, v: attention.splash(q, k, v, mask, 0.25)), (0, 1, 2))
    einsum = jax.grad(loss(lambda q, k, v: attention.einsum(q, k, v, mask, 0.25)), (0, 1, 2))
    for got, want in zip(jax.jit(splash)(q, k, v), jax.jit(einsum)(q, k, v), strict=True):
        np.testing.assert_allclose(got, want, atol=5e-2, rtol=5e-2)


def test_bias_and_explicit_masks_go_through_einsum_and_xla():
    q, k, v = qkv(4)
    bias = jax.random.normal(jax.random.PRNGKey(5), (1, H, L, L))
    dense = jnp.asarray(np.random.default_rng(0).random((B, 1, L, L)) > 0.3) | jnp.eye(L, dtype=bool)
    mask = Mask(dense_B1LS=dense, causal=True)
    ref = reference(q, k, v, mask, 0.5, bias)
    for name in ("einsum", "xla"):
        got = attention.attend(name, q, k, v, mask, scale=0.5, bias_BHLS=bias)
        np.testing.assert_allclose(got, ref, atol=2e-5, err_msg=name)


def test_auto_picks_per_platform(monkeypatch):
    q, k, v = qkv(4)
    for backend, dtype, want in (
        ("cpu", jnp.float32, "einsum"),
        ("gpu", jnp.bfloat16, "cudnn"),
        ("gpu", jnp.float32, "xla"),
        ("tpu", jnp.float32, "splash"),
    ):
        monkeypatch.setattr(attention, "TARGET", backend)
        assert attention.choose("auto", q.astype(dtype), k, Mask(causal=True), False) == want
    assert attention.choose("auto", q, k, Mask(causal=True), True) == "xla"  # TPU, with a bias
    assert attention.choose("auto", q[:, :100], k, Mask(causal=True), False) == "xla"  # not 128-multiple


@pytest.mark.parametrize(
    "name, dtype, backend, message",
    [
        ("flash", "float32", "cpu", "model.attention='flash' is unknown"),
        ("cudnn", "bfloat16", "cpu", "model.attention='cudnn' needs a GPU (this run's backend is cpu)"),
        ("cudnn", "float32", "gpu", "model.attention='cudnn' runs in bfloat16 or float16"),
        ("splash", "float32", "cpu", "model.attention='splash' needs a TPU"),
    ],
)
def test_implementations_that_cannot_run_are_refused_in_one_line(name, dtype, backend, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        attention.check(name, dtype, backend)


def test_splash_refuses_lengths_off_its_tile():
    q, k, v = (x[:, :100] for x in qkv(4))
    with pytest.raises(InputError, match="multiples of 128, not 100 x 100"):
        attention.splash(q, k, v, Mask(causal=True), 0.25, interpret=True)
