"""--config.mode=eval: a pretrained model scored on a validation split, without training."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from lmjax.data import corpora, pipeline, tokenizers
from lmjax.modes import eval as eval_mode
from lmjax.modes import train as train_mode
from lmjax.training import objectives


def test_eval_of_a_trained_workdir_repeats_its_final_evaluation(tiny_config, tmp_path):
    tiny_config.train.update(num_steps=12, eval_every=12, sample_tokens=0)
    final = train_mode.run(tiny_config, tmp_path / "run")
    tiny_config.update(mode="eval")
    tiny_config.finetune.init = str(tmp_path / "run")
    result = eval_mode.run(tiny_config, tmp_path / "eval")
    for key in ("eval/loss", "eval/perplexity", "eval/accuracy", "eval/unigram_accuracy"):
        np.testing.assert_allclose(result[key], final[key], rtol=1e-6, err_msg=key)
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["eval/loss"] == result["eval/loss"]
    tiny_config.serve.quantize = "int8"  # the weights rounded as int8 serving holds them: close, not equal
    int8 = eval_mode.run(tiny_config, tmp_path / "eval-int8")
    assert int8["eval/loss"] != result["eval/loss"]
    np.testing.assert_allclose(int8["eval/perplexity"], result["eval/perplexity"], rtol=0.02)


def test_eval_of_a_hugging_face_llama_equals_transformers_loss(hf_llama, tiny_config, tmp_path):
    import torch

    directory, reference, _ = hf_llama
    corpus = corpora.load(tiny_config.data)
    tiny_config.update(mode="eval")
    tiny_config.finetune.init = str(directory)
    tiny_config.train.eval_batches = 3
    result = eval_mode.run(tiny_config, tmp_path / "eval")

    tok = tokenizers.load(directory)
    nll, count = 0.0, 0.0
    batches = pipeline.eval_batches(
        corpus,
        tok,
        tiny_config.data,
        objective=objectives.get("causal_lm"),
        batch_size=tiny_config.data.batch_size,
        max_batches=3,
    )
    for batch in batches:
        with torch.no_grad():
            logits = reference(torch.tensor(batch["inputs"], dtype=torch.long)).logits
        losses = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), torch.tensor(batch["targets"], dtype=torch.long).flatten(), reduction="none"
        ).numpy()
        nll += float((losses * batch["weights"].ravel()).sum())
        count += float(batch["weights"].sum())
    np.testing.assert_allclose(result["eval/loss"], nll / count, rtol=1e-4)
    assert jnp.isfinite(result["eval/perplexity"])


def test_eval_without_a_model_says_what_to_set(tiny_config, tmp_path):
    tiny_config.update(mode="eval")
    with pytest.raises(ValueError, match="mode=eval scores a pretrained model; set --config.finetune.init"):
        eval_mode.run(tiny_config, tmp_path)
