"""Entry point: python -m lmjax.main --config=experiments/configs/<exp>.py --workdir=DIR [--config.a.b=v].

Bad input ends the run with one line on stderr naming the problem and the fix (exit code 1);
set LMJAX_TRACEBACK=1 to see the full traceback instead.
"""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from lmjax import config as config_lib

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (get_config(arg)).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, config and tokenizer.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    if not FLAGS["verbosity"].present:  # Orbax and TFDS log every save and build at INFO
        logging.set_verbosity(logging.WARNING)
    config = _CONFIG.value
    config_lib.validate(config)
    if "://" in FLAGS.workdir:
        raise ValueError(f"--workdir={FLAGS.workdir}: only local workdirs are supported so far; "
                         "pass a local path (on a TPU VM, a directory on its disk)")
    # jax is imported after the config checks, so that bad input fails fast
    from lmjax import finetune, host, parallel, sample, train

    host.setup()  # XLA:CPU's per-step buffers stay in the heap (lmjax/host.py); before the backend starts
    parallel.initialize(config.distributed)  # before anything touches a device
    if config.mode == "sample":
        sample.sample(config, FLAGS.workdir)
    elif config.mode == "finetune":
        finetune.run(config, FLAGS.workdir)
    else:
        train.train_and_evaluate(config, FLAGS.workdir)


def run():
    try:
        app.run(main)
    except (ValueError, FileNotFoundError, RuntimeError, AttributeError, KeyError) as e:
        if os.environ.get("LMJAX_TRACEBACK"):
            raise
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, (AttributeError, KeyError)):  # a misspelt --config.* key; anything else is a bug
            message = config_lib.unknown_key_message(e, config_lib.base())
            if message is None:
                raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run()
