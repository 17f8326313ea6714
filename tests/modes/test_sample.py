"""--config.mode=sample from finetune.init: a Hugging Face Llama directory, its chat template and its greedy
answer against transformers' own."""

import pytest

from lmjax import config as base_config
from lmjax.modes import sample as sample_mode


def test_chat_answers_as_transformers_does_greedily(hf_llama, tmp_path):
    import torch

    directory, model, tokenizer = hf_llama
    config = base_config.base()
    config.update(mode="sample")
    config.finetune.init = str(directory)
    config.sample.update(chat="What is the capital of France?", num_tokens=12, temperature=0.0)
    got = sample_mode.run(config, tmp_path)
    messages = [{"role": "user", "content": config.sample.chat}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tokenizer.encode(prompt, add_special_tokens=False)])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=tokenizer.eos_token_id)
    assert got == tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_chat_with_a_tokenizer_trained_here_says_what_to_use(tiny_config, tmp_path):
    from lmjax.modes import train as train_mode

    tiny_config.train.update(num_steps=2, eval_every=2, sample_tokens=0)
    train_mode.run(tiny_config, tmp_path)
    tiny_config.update(mode="sample")
    tiny_config.sample.chat = "Hello?"
    with pytest.raises(ValueError, match="sample.chat needs a chat template, which a char tokenizer"):
        sample_mode.run(tiny_config, tmp_path)
