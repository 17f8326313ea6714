"""Experiment (b) of benchmarks/RESULTS.md: First Folio lines -> modern spelling
(experiments/data/folio_pairs.py), with SmolLM2-135M-Instruct. ARM is zero_shot or lora, as in
experiments/configs/bible_es_en.py, with an instruction of its own; lines are short, so a pair is cut at 96
tokens, at most 48 are generated, and LoRA takes 60 steps of 8 lines.

  python -m lmjax.main --config=experiments/configs/folio_spelling.py:lora --workdir=runs/folio/lora \
      --config.task.train_file=data/folio/train.jsonl \
      --config.task.validation_file=data/folio/validation.jsonl --config.task.test_file=data/folio/test.jsonl
"""

from experiments.configs import bible_es_en
from lmjax.errors import InputError

PROMPT = "Rewrite this line of Shakespeare's First Folio in modern spelling and punctuation: {source}"


def get_config(arg: str | None = None):
    if arg not in ("zero_shot", "lora"):
        raise InputError(f"folio_spelling.py takes zero_shot or lora, not {arg!r}")
    config = bible_es_en.get_config(arg)
    config.task.update(prompt=PROMPT, seq_len=96, max_new_tokens=48)
    if arg == "lora":
        config.train.update(num_steps=60, eval_every=60, checkpoint_every=60)
    return config
