"""Experiment (a) of benchmarks/RESULTS.md: Spanish -> English Bible verses (Reina-Valera 1909 -> World
English Bible, experiments/data/bible_pairs.py), the arms compared. ARM is

  zero_shot  SmolLM2-135M-Instruct as it ships, asked in its chat template (learning rate 0, one step)
  lora       SmolLM2-135M-Instruct with rank-8 LoRA adapters on attention and MLP (optim.learning_rate)
  scratch    a T5-style encoder-decoder (4 + 4 blocks, d = 256) trained from scratch, with a SentencePiece
             vocabulary of 8,000 learnt from the training verses (data.text_files: both sides, one a line)

  python -m lmjax.main --config=experiments/configs/bible_es_en.py:lora --workdir=runs/bible/lora \
      --config.task.train_file=data/bible_es_en/train.jsonl --config.task.validation_file=... \
      --config.task.test_file=...   # scratch also: --config.data.text_files=data/bible_es_en/text.txt

Each arm generates greedily, 32 verses at a time, at most 96 new tokens; a verse pair is cut at 192 tokens
(SmolLM2) or 64 + 64 (the encoder-decoder), batches trimmed to a multiple of 32. The step counts are what a
2-core CPU runs in about a quarter of an hour per arm.
"""

from experiments.configs import finetune_files, t5_span
from lmjax.errors import InputError

PROMPT = "Translate this Bible verse from Spanish to English: {source}"


def get_config(arg: str | None = None):
    config = finetune_files.get_config("seq2seq")
    config.task.update(
        prompt=PROMPT, max_new_tokens=96, seq_len=192, batch_size=16, trim_multiple=32, generate_batch_size=32
    )
    config.train.update(eval_batches=2, progress=False, log_every=25)
    if arg == "zero_shot":
        config.optim.update(learning_rate=0.0, warmup_steps=0)
        config.train.update(num_steps=1, checkpoint_every=1)
    elif arg == "lora":
        config.optim.update(
            lora_rank=8,
            lora_targets="attn/(query|key|value)_DHK,attn/out_HKD,mlp/",
            learning_rate=1e-3,
            warmup_steps=10,
            min_learning_rate=0.0,
        )
        config.task.batch_size = 8
        config.train.update(num_steps=120, eval_every=120, checkpoint_every=120)
    elif arg == "scratch":
        base = t5_span.get_config()
        config.finetune.init = ""
        config.model = base.model
        config.model.update(
            num_layers=4, num_decoder_layers=4, d_model=256, d_ff=1024, max_len=128, dropout=0.1
        )
        config.data = base.data
        config.data.update(vocab_size=8000, seq_len=64, batch_size=32)  # data.text_files: the verses
        config.train.objective = base.train.objective
        config.task.update(seq_len=64, target_len=64, batch_size=32)
        config.optim.update(learning_rate=1e-3, warmup_steps=100, min_learning_rate=1e-4)
        config.train.update(num_steps=1200, eval_every=1200, checkpoint_every=1200)
    else:
        raise InputError(f"bible_es_en.py takes zero_shot, lora or scratch, not {arg!r}")
    return config
