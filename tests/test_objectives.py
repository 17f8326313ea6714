import jax
import jax.numpy as jnp
import numpy as np

from lmjax import objectives


def test_causal_lm_matches_numpy_and_ignores_padding():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
    targets = rng.integers(0, 7, size=(2, 5))
    weights = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.float32)
    loss_sum, stats = objectives.causal_lm(jnp.asarray(logits), {"targets": targets, "weights": weights})
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(loss_sum, (ce * weights).sum(), rtol=1e-5)
    summary = objectives.summarize(stats)
    np.testing.assert_allclose(summary["loss"], (ce * weights).sum() / weights.sum(), rtol=1e-5)
    np.testing.assert_allclose(summary["perplexity"], np.exp(summary["loss"]), rtol=1e-5)
    np.testing.assert_allclose(summary["accuracy"], ((logits.argmax(-1) == targets) * weights).sum() / 8, rtol=1e-6)
    # Changing logits at padded positions changes nothing.
    logits2 = logits.copy()
    logits2[0, 3:] = 100.0
    np.testing.assert_allclose(objectives.causal_lm(jnp.asarray(logits2), {"targets": targets, "weights": weights})[0],
                               loss_sum, rtol=1e-6)


def test_unknown_objective_fails_clearly():
    import pytest

    with pytest.raises(ValueError, match="train.objective='mlm' is unknown"):
        objectives.get("mlm")
