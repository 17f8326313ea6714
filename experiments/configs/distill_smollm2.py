"""Distillation: SmolLM2-135M-Instruct (train.teacher, frozen, in the same jitted step) taught to a student of
6 x 384 with SmolLM2's architecture and tokenizer, trained from scratch on Shakespeare. The loss is alpha *
T^2 * KL(teacher_T || student_T) + (1 - alpha) * cross-entropy (lmjax/training/distill.py); alpha = 0 is the
student trained alone.

  python -m experiments.data.replay_texts --out=data/replay
  python -m lmjax.main --config=experiments/configs/distill_smollm2.py:0.5,data/replay \
      --workdir=workdirs/distill_a05 --config.train.distill_temperature=2

Arguments 'ALPHA,DIR': ALPHA the teacher's weight (0: no teacher); DIR the files of
experiments/data/replay_texts.py (shakespeare_train.txt, validated on its last 10%, and smollm2_tokenizer/).
'smoke,DIR' is a two-step run of 2 x 32-token rows.
Sized for a 2-core CPU: 200 steps of 8 x 128-token rows.
"""

from lmjax import config as base_config
from lmjax.errors import InputError


def get_config(arg: str | None = None):
    alpha, _, data_dir = (arg or "").partition(",")
    smoke = alpha == "smoke"
    try:
        weight = 0.5 if smoke else float(alpha)
    except ValueError:
        weight = -1.0
    if not (0 <= weight <= 1 and data_dir):
        raise InputError(
            f"distill_smollm2.py takes 'ALPHA,DIR' (ALPHA in [0, 1]) or 'smoke,DIR', not {arg!r}"
        )
    config = base_config.base()
    config.model.update(
        family="decoder",
        num_layers=6,
        d_model=384,
        num_heads=6,
        num_kv_heads=2,
        d_ff=1024,
        max_len=128,
        positions="rotary",
        rope_theta=100000.0,
        norm="rmsnorm",
        activation="swiglu",
        use_bias=False,
        tie_embeddings=True,
    )
    config.train.update(
        teacher="smollm2-135m-instruct" if weight > 0 else "",
        distill_alpha=weight,
        distill_temperature=1.0,
        objective="causal_lm",
        num_steps=200,
        eval_every=50,
        eval_batches=16,
        checkpoint_every=200,
        log_every=10,
        sample_tokens=0,
    )
    config.data.update(seq_len=128, batch_size=8, shuffle_window=64)
    config.data.update(
        text_files=f"{data_dir}/shakespeare_train.txt", tokenizer_path=f"{data_dir}/smollm2_tokenizer"
    )
    config.optim.update(
        learning_rate=1e-3, min_learning_rate=1e-4, warmup_steps=30, weight_decay=0.1, b2=0.99, grad_clip=1.0
    )
    config.mesh.update(data=1)
    if smoke:
        config.data.update(seq_len=32, batch_size=2)
        config.model.max_len = 32
        config.train.update(num_steps=2, eval_batches=1, checkpoint_every=2, log_every=1, progress=False)
        config.optim.update(warmup_steps=1)
    return config
