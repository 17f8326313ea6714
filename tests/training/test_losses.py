import jax
import jax.numpy as jnp
import numpy as np

from lmjax.training import losses


def test_causal_lm_matches_numpy_and_ignores_padding():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
    targets = rng.integers(0, 7, size=(2, 5))
    weights = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.float32)
    loss_sum, stats = losses.language_model(
        {"logits": jnp.asarray(logits)}, {"targets": targets, "weights": weights}
    )
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(loss_sum, (ce * weights).sum(), rtol=1e-5)
    summary = losses.summarize(stats)
    np.testing.assert_allclose(summary["loss"], (ce * weights).sum() / weights.sum(), rtol=1e-5)
    np.testing.assert_allclose(summary["perplexity"], np.exp(summary["loss"]), rtol=1e-5)
    np.testing.assert_allclose(
        summary["accuracy"], ((logits.argmax(-1) == targets) * weights).sum() / 8, rtol=1e-6
    )
    # Changing logits at padded positions changes nothing.
    logits2 = logits.copy()
    logits2[0, 3:] = 100.0
    np.testing.assert_allclose(
        losses.language_model({"logits": jnp.asarray(logits2)}, {"targets": targets, "weights": weights})[0],
        loss_sum,
        rtol=1e-6,
    )


def test_label_smoothing_and_nsp_terms():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 4, 5)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 5, (2, 4)))
    weights = jnp.asarray([[1, 0, 1, 0], [1, 1, 1, 0]], jnp.float32)
    batch = {"targets": targets, "weights": weights, "nsp_labels": jnp.asarray([0, 1])}
    plain, stats = losses.language_model({"logits": logits}, batch)
    smooth, stats_s = losses.language_model({"logits": logits}, batch, label_smoothing=0.1)
    assert float(smooth) != float(plain) and float(stats_s["nll_sum"]) == float(stats["nll_sum"])
    logp = jax.nn.log_softmax(logits)
    manual = -((0.9 * jax.nn.one_hot(targets, 5) + 0.1 / 5) * logp).sum(-1)
    np.testing.assert_allclose(smooth, (manual * weights).sum(), rtol=1e-5)
    nsp_logits = jnp.asarray([[2.0, 0.0], [0.0, -1.0]])
    total, s = losses.masked_lm({"logits": logits, "nsp_logits": nsp_logits}, batch)
    nsp_ce = -jax.nn.log_softmax(nsp_logits)[jnp.arange(2), batch["nsp_labels"]]
    np.testing.assert_allclose(total, plain + 2 * nsp_ce[0] + 3 * nsp_ce[1], rtol=1e-5)
    summary = losses.summarize(s)
    np.testing.assert_allclose(summary["nsp_accuracy"], 0.5)
    np.testing.assert_allclose(summary["nsp_loss"], nsp_ce.mean(), rtol=1e-5)


def test_macro_f1_matches_a_hand_count():
    import jax.numpy as jnp

    logits = jnp.asarray(np.eye(3)[[0, 0, 1, 2, 2, 1]] * 5.0, jnp.float32)
    batch = {"labels": jnp.asarray([0, 1, 1, 2, 2, 2]), "weights": jnp.ones(6)}
    stats = losses.classification({"logits": logits}, batch)[1]
    out = losses.summarize(stats)
    # class 0: tp 1, fp 1, fn 0 -> 2/3; class 1: tp 1, fp 1, fn 1 -> 1/2; class 2: tp 2, fp 0, fn 1 -> 4/5
    np.testing.assert_allclose(out["macro_f1"], (2 / 3 + 1 / 2 + 4 / 5) / 3, rtol=1e-6)
    np.testing.assert_allclose(out["accuracy"], 4 / 6, rtol=1e-6)


def test_regression_loss_is_the_weighted_squared_error():
    import jax.numpy as jnp

    outputs = {"scores": jnp.asarray([1.0, 2.0, 5.0])}
    batch = {"labels": jnp.asarray([0.5, 2.0, -3.0]), "weights": jnp.asarray([1.0, 1.0, 0.0])}
    loss_sum, stats = losses.regression(outputs, batch)
    np.testing.assert_allclose(loss_sum, 0.25)
    np.testing.assert_allclose(losses.summarize(stats)["loss"], 0.125)


def test_span_qa_exact_match_and_f1():
    import jax.numpy as jnp

    start = jnp.full((2, 8), -5.0).at[0, 2].set(5.0).at[1, 3].set(5.0)
    end = jnp.full((2, 8), -5.0).at[0, 4].set(5.0).at[1, 4].set(5.0)
    batch = {"start": jnp.asarray([2, 2]), "end": jnp.asarray([4, 5]), "weights": jnp.ones(2)}
    out = losses.summarize(losses.span_qa({"start_logits": start, "end_logits": end}, batch)[1])
    # second: predicted 3..4 vs gold 2..5: precision 1, recall 1/2 -> F1 2/3
    np.testing.assert_allclose([out["exact_match"], out["f1"]], [0.5, (1 + 2 / 3) / 2], rtol=1e-6)
    s, e = losses.best_span(end, start)  # end before start is never chosen
    assert (np.asarray(s) <= np.asarray(e)).all()


def test_text_to_text_exact_match_counts_whole_targets():
    import jax.numpy as jnp

    targets = jnp.asarray([[3, 1, 0], [4, 1, 0]])
    logits = jax.nn.one_hot(jnp.asarray([[3, 1, 2], [4, 2, 0]]), 5) * 9.0
    batch = {"targets": targets, "weights": (targets > 0).astype(jnp.float32)}
    out = losses.summarize(losses.text_to_text({"logits": logits}, batch)[1])
    np.testing.assert_allclose([out["exact_match"], out["accuracy"]], [0.5, 3 / 4])


def test_info_nce_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    B, D, tau = 5, 4, 0.1
    a, b = rng.normal(size=(B, D)), rng.normal(size=(B, D))
    w = np.array([1, 1, 1, 1, 0], np.float32)  # the last row is padding: neither anchor nor candidate
    loss, stats = losses.info_nce(
        {"embeddings": jnp.asarray(np.stack([a, b]), jnp.float32)}, {"weights": w}, temperature=tau
    )
    an, bn = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
    want, correct = 0.0, 0
    for i in range(4):
        s = an[i] @ bn[:4].T / tau
        want += -(s[i] - np.log(np.exp(s).sum()))
        correct += int(np.argmax(s) == i)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    assert float(stats["weight"]) == 4 and float(stats["correct"]) == correct


def test_bidirectional_lm_sums_both_directions():
    rng = np.random.default_rng(0)
    fwd, bwd = rng.normal(size=(2, 3, 6)), rng.normal(size=(2, 3, 6))
    batch = {
        "targets": rng.integers(0, 6, (2, 3)),
        "weights": np.ones((2, 3), np.float32),
        "prev_targets": rng.integers(0, 6, (2, 3)),
        "prev_weights": np.array([[0, 1, 1], [0, 1, 1]], np.float32),
    }
    loss, stats = losses.bidirectional_lm(
        {"logits": jnp.asarray(fwd), "backward_logits": jnp.asarray(bwd)}, batch
    )

    def nll(z, t):
        return -(z[..., t] - np.log(np.exp(z).sum()))

    want = sum(nll(fwd[i, j], batch["targets"][i, j]) for i in range(2) for j in range(3)) + sum(
        nll(bwd[i, j], batch["prev_targets"][i, j]) for i in range(2) for j in (1, 2)
    )
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    assert float(stats["weight"]) == 10
