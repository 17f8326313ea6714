"""--config.mode=sample from finetune.init: a Hugging Face Llama directory, its chat template and its greedy
answer against transformers' own."""

import pytest

from lmjax import config as base_config
from lmjax import sample

TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def chat_llama(tmp_path_factory):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf_tokenizers = pytest.importorskip("tokenizers")
    bpe = hf_tokenizers.Tokenizer(hf_tokenizers.models.BPE())
    bpe.pre_tokenizer = hf_tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = hf_tokenizers.decoders.ByteLevel()
    trainer = hf_tokenizers.trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=hf_tokenizers.pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(["What is the capital of France? Paris is the capital.\n" * 30], trainer)
    directory = tmp_path_factory.mktemp("chat_llama")
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", chat_template=TEMPLATE
    )
    tokenizer.save_pretrained(directory)
    cfg = transformers.LlamaConfig(
        vocab_size=bpe.get_vocab_size(),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rope_theta=1e5,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.save_pretrained(directory)
    return directory, model, tokenizer, torch


def test_chat_answers_as_transformers_does_greedily(chat_llama, tmp_path):
    directory, model, tokenizer, torch = chat_llama
    config = base_config.base()
    config.update(mode="sample")
    config.finetune.init = str(directory)
    config.sample.update(chat="What is the capital of France?", num_tokens=12, temperature=0.0)
    got = sample.sample(config, tmp_path)
    messages = [{"role": "user", "content": config.sample.chat}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tokenizer.encode(prompt, add_special_tokens=False)])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=tokenizer.eos_token_id)
    assert got == tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_chat_with_a_tokenizer_trained_here_says_what_to_use(tiny_config, tmp_path):
    from lmjax import train

    tiny_config.train.update(num_steps=2, eval_every=2, sample_tokens=0)
    train.train_and_evaluate(tiny_config, tmp_path)
    tiny_config.update(mode="sample")
    tiny_config.sample.chat = "Hello?"
    with pytest.raises(ValueError, match="sample.chat needs a chat template, which a char tokenizer"):
        sample.sample(tiny_config, tmp_path)
