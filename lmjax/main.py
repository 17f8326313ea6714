"""Entry point: python -m lmjax.main --config=experiments/configs/<exp>.py --workdir=DIR [--config.a.b=v].

Exit status: 0 finished; 1 bad input, reported as one `error: ...` line on stderr that names the problem and
the fix (set LMJAX_TRACEBACK=1 for its traceback); 75 (EXIT_PREEMPTED) stopped by SIGTERM after saving a
checkpoint: the same command resumes. Any other failure is a bug or the platform's (out of memory, ...) and
keeps its traceback (Python's status 1).
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from lmjax import config as config_lib
from lmjax import errors
from lmjax.errors import EXIT_PREEMPTED  # tpu_scripts/tpu.py and Slurm requeues read it

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (get_config(arg)).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory or gs:// URL for checkpoints, logs, config and tokenizer.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    if not FLAGS["verbosity"].present:  # Orbax and TFDS log every save and build at INFO
        logging.set_verbosity(logging.WARNING)
    config = _CONFIG.value
    config_lib.validate(config)
    # jax is imported after the value checks, so that bad values fail fast
    from lmjax import host, parallel
    from lmjax.modes import eval as eval_mode
    from lmjax.modes import export as export_mode
    from lmjax.modes import finetune as finetune_mode
    from lmjax.modes import harness as harness_mode
    from lmjax.modes import sample as sample_mode
    from lmjax.modes import serve as serve_mode
    from lmjax.modes import train as train_mode
    from lmjax.training import prepare

    prepare.check_config(config)  # against the registries (model families, objectives, optimizers, meshes)
    host.tune_allocator()  # XLA:CPU keeps per-step buffers in the heap (lmjax/host.py); before jax starts
    parallel.initialize(config.distributed)  # before anything touches a device
    jobs = {"sample": sample_mode.run, "export": export_mode.run, "serve": serve_mode.run}
    if config.mode in jobs:
        jobs[config.mode](config, FLAGS.workdir)
        return 0
    # the command line's values: a model override that contradicts finetune.init / train.init stops the run
    overrides = config_flags.get_override_values(FLAGS["config"])
    job = {
        "eval": eval_mode.run,
        "finetune": finetune_mode.run,
        "train": train_mode.run,
        "harness": harness_mode.run,
    }[config.mode]
    return EXIT_PREEMPTED if "preempted_at" in job(config, FLAGS.workdir, overrides=overrides) else 0


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, except that an InputError from the config file (get_config(arg)) stays one
    line."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        chain, cause = [], e.__cause__ or e.__context__
        while cause is not None:
            chain.append(cause)
            cause = cause.__cause__ or cause.__context__
        own = [c for c in chain if isinstance(c, errors.InputError)]
        if own:  # the innermost: config_flags re-raises it with a traceback in the message
            raise own[-1] from None
        return app.parse_flags_with_usage(argv)  # absl's own message for any other flag error


def run():
    try:
        app.run(main, flags_parser=_parse_flags)
    except (errors.InputError, AttributeError, KeyError) as e:
        if os.environ.get("LMJAX_TRACEBACK"):
            raise
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        if not isinstance(e, errors.InputError):  # a misspelt --config.* key; anything else is a bug
            message = config_lib.unknown_key_message(e, config_lib.base(), sys.argv)
            if message is None:
                raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run()
