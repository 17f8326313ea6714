"""GPT-style decoders at the sizes people compare against, for pods, GPUs and ahead-of-time checks.

  python -m lmjax.main --config=experiments/configs/gpt.py:124m --workdir=$HOME/runs/gpt2_124m
  python tpu_scripts/aot_check.py --config=experiments/configs/gpt.py:124m --topology=v5e:2x4

Arguments: '124m' (default) GPT-2 small: 12 layers x 768, 12 heads, context 1024, learned positions,
GELU, vocabulary 50,304 (GPT-2's 50,257 rounded up to a multiple of 128), bf16 compute with fp32
parameters; '350m' GPT-2 medium (24 x 1024); '1.3b' (24 x 2048); '7b' a LLaMA-7B-shaped model
(32 x 4096, SwiGLU 11,008, rotary, RMSNorm, untied, vocabulary 32,000). All are sharded with FSDP
over every device by default (mesh fsdp=-1); e.g. `--config.mesh.fsdp=1 --config.mesh.data=-1` for
plain data parallelism. Data: a sentencepiece vocabulary of the model's size trained on the corpus
(TFDS lm1b by default; any `--config.data.tfds_name` or `--config.data.text_files`).
"""

from lmjax import config as base_config
from lmjax.errors import InputError

SIZES = {  # num_layers, d_model, num_heads
    "124m": (12, 768, 12),
    "350m": (24, 1024, 16),
    "1.3b": (24, 2048, 16),
}


def get_config(arg: str | None = None):
    size = arg or "124m"
    config = base_config.base()
    config.model.update(
        max_len=1024,
        positions="learned",
        activation="gelu_tanh",
        dtype="bfloat16",
        vocab_size=50304,
        dropout=0.0,
        use_bias=True,
        tie_embeddings=True,
    )
    if size in SIZES:
        layers, d, heads = SIZES[size]
        config.model.update(num_layers=layers, d_model=d, num_heads=heads)
    elif size == "7b":
        config.model.update(
            num_layers=32,
            d_model=4096,
            num_heads=32,
            d_ff=11008,
            max_len=2048,
            positions="rotary",
            activation="swiglu",
            norm="rmsnorm",
            use_bias=False,
            tie_embeddings=False,
            vocab_size=32000,
        )
    else:
        raise InputError(f"gpt.py takes one of {sorted(SIZES) + ['7b']}, not {arg!r}")
    config.data.update(
        tfds_name="lm1b",
        text_key="text",
        tokenizer="sentencepiece",
        vocab_size=config.model.vocab_size,
        tokenizer_train_examples=200_000,
        seq_len=config.model.max_len,
        batch_size=64,
    )
    config.optim.update(
        learning_rate=6e-4, min_learning_rate=6e-5, warmup_steps=2000, b1=0.9, b2=0.95, weight_decay=0.1
    )
    config.train.update(
        num_steps=100_000,
        log_every=100,
        eval_every=2000,
        eval_batches=50,
        checkpoint_every=2000,
        sample_tokens=0,
    )
    config.mesh.update(data=1, fsdp=-1, tensor=1)
    return config
