"""Fine-tune on your own files: experiments/configs/finetune_files.py:KIND, KIND one of classification,
regression, tokens, span_qa, seq2seq or chat (lmjax/tasks/files.py has the columns); the encoder kinds
start from the pretrained all-MiniLM-L6-v2, seq2seq and chat from SmolLM2-135M-Instruct.

  python -m lmjax.main --config=experiments/configs/finetune_files.py:classification --workdir=workdirs/mine \
      --config.task.train_file=train.jsonl --config.task.validation_file=dev.jsonl \
      --config.task.test_file=test.jsonl --config.task.columns.label=sentiment

Files are JSONL (CSV or TSV too for classification, regression and seq2seq), local paths or gs:// URLs;
validation and test are optional. Each evaluated split writes predictions/<split>.jsonl in the file's own
terms, and its metrics (scikit-learn, scipy, seqeval, SQuAD v1.1's, sacrebleu, rouge-score:
lmjax/tasks/predictions.py) go to metrics.jsonl and results.json as validation/<metric> and test/<metric>;
seq2seq and chat are scored by generating (task.num_beams, task.max_new_tokens). finetune.init starts
elsewhere: an lmjax workdir (an encoder-decoder's too, for seq2seq), a Hugging Face directory or a GGUF file;
the usual overrides work (finetune.pretrain_lambda with a backbone that has its pretraining head,
finetune.l2sp, optim.lora_rank, task.pack for classification and regression).

Defaults, encoder kinds: texts of at most 128 tokens (span_qa: 256, windows 128 apart), batches of 16, 1,000
steps (set train.num_steps for your data's size: steps = epochs x rows / 16), a backbone learning rate of 5e-5
and 1e-3 for the new head, evaluated every 200. seq2seq and chat: rows of at most 256 tokens, batches of 8, a
learning rate of 1e-4, answers of at most 64 new tokens, greedy.
"""

from lmjax import config as base_config
from lmjax.errors import InputError
from lmjax.tasks import files as task_files


def get_config(arg: str | None = None):
    if arg not in task_files.KINDS:
        raise InputError(f"finetune_files.py takes a kind, one of {sorted(task_files.KINDS)}, not {arg!r}")
    config = base_config.base()
    config.mode = "finetune"
    config.model.update(dropout=0.1, attention_dropout=0.0)
    config.task.update(kind=arg, pooling="mean", seq_len=128, batch_size=16, head_dropout=0.1)
    config.finetune.update(init="all-MiniLM-L6-v2")
    config.optim.update(
        learning_rate=5e-5,
        min_learning_rate=0.0,
        warmup_steps=50,
        weight_decay=0.01,
        head_learning_rate=1e-3,
        b2=0.999,
    )
    config.train.update(objective="mlm", num_steps=1000, eval_every=200, checkpoint_every=500, log_every=50)
    if arg == "span_qa":
        config.task.update(seq_len=256, doc_stride=128)
    if task_files.KINDS[arg].head == "generation":
        config.finetune.init = "smollm2-135m-instruct"
        config.model.update(dropout=0.0)
        config.task.update(seq_len=256, batch_size=8, max_new_tokens=64)
        config.optim.update(learning_rate=1e-4, warmup_steps=20)
        config.train.objective = "causal_lm"
    return config
