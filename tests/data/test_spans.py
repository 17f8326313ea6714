import numpy as np
import pytest

from lmjax.data import spans

SENTINELS = np.arange(1000, 1100)


@pytest.mark.parametrize("length", [5, 37, 141, 568])
def test_span_corruption_round_trips_and_has_t5_statistics(length):
    rng = np.random.default_rng(length)
    noise = 0
    for _ in range(50):
        tokens = rng.integers(3, 900, length).astype(np.int32)
        mask = spans.noise_mask(length, rng, 0.15, 3.0)
        inputs, targets = spans.corrupt(tokens, mask, SENTINELS, eos_id=2)
        np.testing.assert_array_equal(spans.uncorrupt(inputs, targets, SENTINELS, 2), tokens)
        assert inputs[-1] == targets[-1] == 2 and targets[0] == SENTINELS[0] and not mask[0]
        noise += mask.sum()
    num_noise, num_spans = spans.span_counts(length, 0.15, 3.0)
    assert noise == 50 * num_noise
    assert inputs.size == length - num_noise + num_spans + 1 and targets.size == num_noise + num_spans + 1


def test_window_lengths_match_t5():
    assert spans.window_lengths(512, 0.15, 3.0) == (568, 114)  # T5's published input/target lengths
    raw, tgt = spans.window_lengths(128, 0.15, 3.0)
    noise, n = spans.span_counts(raw, 0.15, 3.0)
    assert raw - noise + n + 1 == 128 and tgt == noise + n + 1
