"""The base config every experiment starts from; experiment files change values, never add keys.

A leaf: it imports ml_collections and the standard library only, so loading an experiment config imports no
JAX. `validate` checks values on their own; the checks against the registries (model families, objectives,
optimizers, meshes) live beside them and run together in `lmjax.training.prepare.check_config`."""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
from collections.abc import Sequence

from ml_collections import ConfigDict

from lmjax.errors import InputError

# The default table (config.mesh.rules starts from it; lmjax/sharding.py reads it). Parameters: vocab, embed,
# heads, kv_heads (grouped-query K/V), kv (head size), mlp, layers (model.scan_layers' stacking axis).
# Activations: batch, length, act_embed (the residual stream), act_heads, act_mlp, act_vocab (logits).
DEFAULT_RULES = {
    "batch": "data,fsdp",
    "length": "",
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "kv": "",
    "mlp": "tensor",
    "layers": "",
    "act_embed": "",
    "act_heads": "tensor",
    "act_mlp": "tensor",
    "act_vocab": "tensor",
}


def _model() -> ConfigDict:
    return ConfigDict(
        dict(
            family="decoder",  # decoder | encoder | encoder_decoder | rnn | elmo | word2vec | glove
            # word2vec: consecutive groups of this many examples score the first one's data.negatives noise
            # words (BlazingText's negative sharing; 1: each its own, as word2vec.c)
            share_negatives=1,
            vocab_size=0,  # 0: the tokenizer's vocabulary size
            num_layers=4,
            num_decoder_layers=0,  # encoder_decoder: 0 means num_layers
            num_heads=4,
            num_kv_heads=0,  # key/value heads, a divisor of num_heads (fewer: grouped-query); 0: num_heads
            head_dim=0,
            d_model=128,
            d_ff=0,  # head_dim 0: d_model / num_heads; d_ff 0: 4 * d_model
            max_len=64,  # the longest sequence (and decoding cache) the model takes
            positions="learned",  # learned | sinusoidal | rotary | relative (T5 bias)
            rope_theta=10000.0,  # rotary positions' base (Llama 2: 1e4, SmolLM2: 1e5, Llama 3: 5e5)
            relative_buckets=32,
            relative_max_distance=128,
            norm="layernorm",
            norm_position="pre",
            norm_eps=1e-5,  # layernorm | rmsnorm; pre | post
            activation="gelu_tanh",  # gelu | gelu_tanh | relu | swiglu | geglu
            scale_attention=True,  # divide attention logits by sqrt(head_dim) (T5 does not)
            dropout=0.0,
            attention_dropout=0.0,
            tie_embeddings=True,
            use_bias=True,
            qkv_bias=False,  # query/key/value biases even with use_bias=False (Qwen2)
            dtype="float32",
            # none | full | dots | dots_no_batch: what a block keeps for backward (layers.REMAT_POLICIES)
            remat="none",
            scan_layers=False,  # Transformer blocks as one nnx.scan over stacked parameters
            # auto | einsum | xla | cudnn | splash: the attention implementation (models/attention.py)
            attention="auto",
            type_vocab_size=2,
            embed_norm=False,
            encoder_heads="mlm_nsp",  # encoder: segments, BERT's norm, heads
            share_embeddings=True,  # encoder_decoder: one token table for encoder and decoder
            scale_output=False,  # encoder_decoder: decoder output * d_model**-0.5 before the head (T5 v1.0)
            cell="lstm",  # rnn: lstm | gru (d_model wide, num_layers deep)
            char_dim=16,
            char_filters="1:32,2:32,3:64,4:128,5:256",
            highway_layers=2,
        )
    )  # elmo's character CNN


def _data() -> ConfigDict:
    return ConfigDict(
        dict(
            text_files="",  # comma-separated text files (local or gs://); empty: the embedded corpus
            tfds_name="",
            tfds_data_dir="",
            train_split="train",
            eval_split="validation",
            text_key="text",
            validation_fraction=0.1,  # text files: the last fraction of each file is the validation split
            cache_dir="",  # built datasets and downloads; empty: $LMJAX_CACHE or ~/.cache/lmjax
            # char | word | sentencepiece (trained here) | wordpiece (a pretrained model's, via
            # tokenizer_path)
            tokenizer="char",
            # sentencepiece vocabulary size to train; word: the most frequent words kept (0: all)
            vocab_size=0,
            min_count=5,  # word: words seen fewer times are dropped
            tokenizer_path="",  # a saved tokenizer directory to use instead of training one
            tokenizer_train_examples=0,  # examples the tokenizer is trained on; 0: the whole train split
            # shakespeare | wiki_sample: the embedded corpus used without text_files/tfds_name
            corpus="shakespeare",
            # 'NAME:WEIGHT,...' (lmjax/data/mixture.py): rows drawn from several corpora by weight, each
            # NAME a built-in corpus, a text file path or glob (local or gs://) or a TFDS name; every source
            # is evaluated on its own (weight 0: evaluated, never trained on). Replaces corpus/text_files
            mixture="",
            seq_len=64,
            batch_size=12,  # batch_size is global, over all processes and devices
            shards=0,  # data shards (documents i::shards), a multiple of the processes; 0: one per process
            shuffle_window=256,
            mask_rate=0.15,
            mask_token_frac=0.8,
            random_token_frac=0.1,
            whole_word=False,
            nsp=True,  # mlm
            noise_density=0.15,
            mean_span=3.0,  # span_corruption; decoder length follows from seq_len
            max_chars=50,  # bilm (ELMo): characters kept per token, markers included
            window=5,
            negatives=5,
            sample=1e-3,
        )
    )  # skipgram / cbow / glove: window, noise words, subsampling threshold


def _optim() -> ConfigDict:
    return ConfigDict(
        dict(
            name="adamw",  # adamw | sgd (word2vec) | adagrad (GloVe)
            schedule="cosine",  # cosine | linear: decay after warmup to min_learning_rate at train.num_steps
            learning_rate=1e-3,
            min_learning_rate=1e-4,
            warmup_steps=100,
            b1=0.9,
            b2=0.99,
            eps=1e-8,
            initial_accumulator=0.0,  # adagrad's starting sum of squared gradients
            weight_decay=0.1,
            decay_embeddings=False,
            grad_clip=1.0,
            grad_accum_steps=1,
            # word vectors (lmjax/training/sparse.py): the step's batch as this many sparse updates, one after
            # another
            updates_per_step=1,
            # comma-separated regexes matched at the start of parameter paths, e.g. 'backbone/' (a probe)
            freeze="",
            # layer-wise learning-rate decay: block i (from 0) of N learns at layer_decay ** (N - i) x
            layer_decay=1.0,
            head_learning_rate=0.0,  # fine-tuning: peak learning rate of the new head; 0: learning_rate
            # LoRA (fine-tuning; lmjax/training/lora.py): rank of W + (lora_alpha / lora_rank) A B (0: off;
            # on, the backbone is frozen), alpha (0: = rank), comma-separated regexes searched in backbone
            # param paths
            lora_rank=0,
            lora_alpha=0.0,
            lora_targets="attn/(query|key|value)_DHK,attn/out_HKD",
        )
    )


def _train() -> ConfigDict:
    return ConfigDict(
        dict(
            # causal_lm | mlm | span_corruption | contrastive | bilm | skipgram | cbow | glove
            objective="causal_lm",
            temperature=0.05,
            glove_x_max=100.0,
            glove_alpha=0.75,  # contrastive (InfoNCE); glove's f(x)
            label_smoothing=0.0,
            num_steps=2000,
            log_every=50,
            eval_every=250,
            eval_batches=50,
            checkpoint_every=500,
            keep_checkpoints=3,
            sample_tokens=200,
            progress=True,
            # resume from this checkpoint, not the newest (one that cannot be read); 0: the newest
            restore_step=0,
            # 'A:B': a jax.profiler trace of steps A..B (inclusive) in <workdir>/profile (TensorBoard,
            # Perfetto); empty: none
            profile_steps="",
            # mode=train from a pretrained model (continued pretraining): an lmjax workdir, a Hugging Face
            # directory, a GGUF file or a shipped name; its architecture and tokenizer replace model.* and the
            # tokenizer settings, the optimizer starts fresh ('': from scratch)
            init="",
            # distillation (lmjax/training/distill.py): a frozen teacher named as init is; the loss is
            # alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * the objective's loss, on the next-token
            # logits (mode=train) or the task head's (mode=finetune: a fine-tuning workdir of the same task)
            teacher="",
            distill_alpha=0.5,
            distill_temperature=1.0,
            # linear schedules from the values above at step 0 to these at train.num_steps (-1: constant)
            distill_alpha_end=-1.0,
            distill_temperature_end=-1.0,
            # lm-evaluation-harness tasks (comma-separated; settings in harness.*) scored during a decoder's
            # run every harness_every steps (0: at the end only) as harness/<task>/<metric>
            harness_tasks="",
            harness_every=0,
        )
    )


def _task() -> ConfigDict:
    # mode=finetune: L_FT = L_task + lambda * L_pretrain (train.objective on the data.* stream) + l2sp *
    # ||theta - theta_0||^2
    return ConfigDict(
        dict(
            # rotten_tomatoes | glue/sst2 | imdb_reviews | conll2003 | squad (see lmjax/tasks/catalog.py);
            # with train_file: the run's own name for its task ('': the train file's name)
            name="",
            # a task from the user's files (lmjax/tasks/files.py): kind is classification | regression |
            # tokens | span_qa | seq2seq | chat; JSONL (CSV too for classification, regression and seq2seq),
            # local paths or gs:// URLs
            kind="",
            train_file="",
            validation_file="",  # '': no validation split
            test_file="",  # '': no test split
            # the files' column names: classification text (+ text_pair when the file has it), label;
            # regression text, text_pair, score; tokens tokens, tags; span_qa question, context, answers;
            # seq2seq source, target; chat messages
            columns=ConfigDict(
                dict(
                    text="text",
                    text_pair="text_pair",
                    label="label",
                    score="score",
                    tokens="tokens",
                    tags="tags",
                    question="question",
                    context="context",
                    answers="answers",
                    source="source",
                    target="target",
                    messages="messages",
                )
            ),
            # span_qa: contexts longer than a window are read in windows whose starts lie doc_stride tokens
            # apart (as BERT's run_squad.py; 0: half a window)
            doc_stride=0,
            # seq2seq on a decoder: the prompt, '{source}' standing for the source text; a chat model's user
            # turn ('': the source alone), else the text before the target ('': '{source}\n')
            prompt="",
            target_len=64,  # seq2seq on an encoder-decoder: target tokens (with EOS) a row
            # seq2seq and chat are evaluated by generation: greedy (num_beams=1) or beam search, at most
            # max_new_tokens tokens a row
            num_beams=1,
            max_new_tokens=64,
            generate_batch_size=0,  # rows generated at once (0: task.batch_size)
            tfds_data_dir="",
            num_labels=0,  # 0: the dataset's label count (else it must match)
            pooling="cls",  # classification: cls | mean | last (decoders: last)
            seq_len=128,
            # > 0: a batch is cut to the shortest multiple of this many tokens holding its longest text
            # (single process; each length compiles once); 0: every batch is seq_len long
            trim_multiple=0,
            # classification: each batch's texts packed into as few seq_len rows as hold them, attention kept
            # within each text (the same texts and outputs as padded rows, fewer tokens; single process)
            pack=False,
            batch_size=32,
            head_dropout=0.1,
        )
    )


def _finetune() -> ConfigDict:
    return ConfigDict(
        dict(
            # lmjax workdir, Hugging Face directory, or 'all-MiniLM-L6-v2'; the model comes from it ('':
            # config.model)
            init="",
            pretrain_lambda=0.0,  # lambda; 0: the pretraining stream is neither read nor computed
            # constant | warmup (0 -> lambda) | decay (lambda -> 0), linear over lambda_steps
            lambda_schedule="constant",
            lambda_steps=0,  # 0: train.num_steps
            l2sp=0.0,
        )
    )  # L2-SP weight towards the pretrained backbone


def _harness() -> ConfigDict:
    # mode=harness (lmjax/evaluation/harness.py; pip install 'lmjax[eval]'): lm-evaluation-harness on
    # finetune.init or the workdir's run. tasks: comma-separated; include_path: a directory of task YAML files
    # (experiments/harness); limit: examples a task (0: all); num_fewshot: -1 for each task's own
    return ConfigDict(dict(tasks="", include_path="", limit=0, num_fewshot=-1, batch_size=16))


def _mesh() -> ConfigDict:
    # Devices as a (data, fsdp, tensor) mesh (one axis -1: the rest); rules: logical axis -> mesh axes
    # (lmjax/sharding.py).
    return ConfigDict(
        dict(
            data=-1,
            fsdp=1,
            tensor=1,
            engine="jit",  # jit | pmap (data-parallel, pmap-era scripts)
            rules=ConfigDict(DEFAULT_RULES),
        )
    )


def _distributed() -> ConfigDict:
    # Multi-host (jax.distributed). enable: auto (start when the environment shows several processes: Slurm, a
    # TPU pod's TPU_WORKER_HOSTNAMES) | yes (let JAX detect the cluster: TPU VMs, Slurm, MPI, Kubernetes) |
    # no. An explicit coordinator_address (host:port) with num_processes / process_id works anywhere.
    return ConfigDict(
        dict(enable="auto", coordinator_address="", num_processes=0, process_id=-1, local_device_ids="")
    )


def _sample() -> ConfigDict:
    # mode=sample: from the workdir's run, or from finetune.init when set; chat: one user message put through
    # the model's chat template (the answer ends at its end-of-sequence token) instead of prompt
    return ConfigDict(
        dict(
            prompt="\n", chat="", num_tokens=500, temperature=0.8, top_k=200, top_p=1.0, num_samples=1, seed=0
        )
    )


def _serve() -> ConfigDict:
    # mode=export / mode=serve (lmjax/serving): the decoder of the workdir's run, or of finetune.init when set
    return ConfigDict(
        dict(
            host="127.0.0.1",  # any other address needs the API key (api_key_env)
            port=8000,
            api_key_env="LMJAX_API_KEY",  # the environment variable holding the key clients send as Bearer
            model_name="",  # the name /v1/models lists and requests must use; empty: the workdir's name
            quantize="",  # '' (the weights as trained) | int8 (weight-only, per output channel)
            max_len=0,  # cache slots per sequence (prompt + output); 0: model.max_len
            slots=16,  # sequences decoded together (continuous batching)
            max_queue=64,  # requests waiting for a slot; more are answered 503 at once
            max_tokens=256,  # the most tokens one request may generate
            export_dir="",  # mode=export: where to write; empty: <workdir>/export
            platforms="cpu",  # mode=export: comma-separated jax.export platforms (cpu, cuda, tpu)
        )
    )


def base() -> ConfigDict:
    """Every setting with its default, built section by section (one function a section)."""
    config = ConfigDict()
    # train | sample | finetune | eval (finetune.init's loss on data.*'s validation) | export | serve |
    # harness (lm-evaluation-harness tasks)
    config.mode = "train"
    config.seed = 0
    config.model = _model()
    config.data = _data()
    config.optim = _optim()
    config.train = _train()
    config.task = _task()
    config.finetune = _finetune()
    config.harness = _harness()
    config.mesh = _mesh()
    config.distributed = _distributed()
    config.sample = _sample()
    config.serve = _serve()
    return config


def load(spec: str) -> ConfigDict:
    """The config of an experiment file, as --config takes it: 'path/to/exp.py' or 'path/to/exp.py:ARG'."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("experiment_config", path)
    if module_spec is None or not os.path.isfile(path):
        raise InputError(f"config file {path!r} does not exist; give experiments/configs/<name>.py[:ARG]")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg)


def from_saved(saved: dict) -> ConfigDict:
    """A run's saved config.json as a ConfigDict, on top of today's base (keys added since take their
    defaults)."""
    config = base()
    for section, values in saved.items():
        if isinstance(values, dict) and section in config:
            config[section].update({k: v for k, v in values.items() if k in config[section]})
        elif section in config:
            config[section] = values
    return config


def lock(config: ConfigDict) -> ConfigDict:
    validate(config)
    config.lock()
    return config


def profile_range(text: str) -> tuple[int, int] | None:
    """train.profile_steps 'A:B' as (A, B); None when empty."""
    if not text:
        return None
    first, _, last = text.partition(":")
    if not (first.isdigit() and last.isdigit() and 0 < int(first) <= int(last)):
        raise InputError(
            f"train.profile_steps={text!r} is not a step range; write 'A:B' with 1 <= A <= B, e.g. '10:12'"
        )
    return int(first), int(last)


MODES = ("train", "sample", "finetune", "eval", "export", "serve", "harness")


def validate(config: ConfigDict) -> None:
    """Value checks that need no registry (lmjax.training.prepare.check_config runs these and those)."""
    if config.mode not in MODES:
        raise InputError(f"mode={config.mode!r} is unknown; use one of {', '.join(MODES)}")
    validate_train(config)
    if config.mode == "finetune":
        validate_finetune(config)
    elif config.mode == "train" and config.optim.lora_rank:
        raise InputError(
            f"optim.lora_rank={config.optim.lora_rank} is for fine-tuning (mode=finetune); set it to 0 here"
        )
    profile_range(config.train.profile_steps)
    validate_serve(config.serve)
    if config.optim.lora_rank < 0:
        raise InputError(f"optim.lora_rank={config.optim.lora_rank} is negative; use 0 (off) or a rank >= 1")
    if config.optim.grad_accum_steps < 1 or config.data.batch_size % config.optim.grad_accum_steps:
        raise InputError(
            f"data.batch_size={config.data.batch_size} is not divisible by optim.grad_accum_steps="
            f"{config.optim.grad_accum_steps}; pick an accumulation count that divides the batch"
        )
    if config.distributed.enable not in ("auto", "yes", "no"):
        raise InputError(
            f"distributed.enable={config.distributed.enable!r} is unknown; use 'auto', 'yes' or 'no'"
        )
    if config.data.tokenizer == "sentencepiece" and not (
        config.data.vocab_size or config.data.tokenizer_path
    ):
        raise InputError(
            "data.tokenizer='sentencepiece' needs data.vocab_size (e.g. 8000) or data.tokenizer_path"
        )


def validate_train(config: ConfigDict) -> None:
    """train.init and the distillation settings."""
    t = config.train
    if t.init and config.mode != "train":
        raise InputError(
            f"train.init starts a pretraining run (mode=train); mode={config.mode} starts from finetune.init"
        )
    if t.teacher and config.mode not in ("train", "finetune"):
        raise InputError(f"train.teacher distils in mode=train or mode=finetune, not mode={config.mode}")
    if t.harness_every < 0 or config.harness.batch_size < 1 or config.harness.limit < 0:
        raise InputError(
            "train.harness_every, harness.limit (0: all) and harness.batch_size must be >= 0, >= 0 and >= 1"
        )
    ranges = {
        "distill_alpha": (lambda v: 0 <= v <= 1, "must lie in [0, 1]"),
        "distill_temperature": (lambda v: v > 0, "must be positive"),
    }
    for name, (ok, rule) in ranges.items():
        if not ok(t[name]):
            raise InputError(f"train.{name}={t[name]} {rule}")
        end = t[f"{name}_end"]  # -1: the schedule is constant
        if not (ok(end) or end == -1):
            raise InputError(f"train.{name}_end={end} {rule} (or -1)")


QUANTIZE = ("", "int8")


def validate_serve(serve: ConfigDict) -> None:
    if serve.quantize not in QUANTIZE:
        raise InputError(f"serve.quantize={serve.quantize!r} is unknown; use '' (none) or 'int8'")
    for key in ("slots", "max_queue", "max_tokens"):
        if serve[key] < 1:
            raise InputError(f"serve.{key}={serve[key]} must be at least 1")
    if serve.max_len < 0:
        raise InputError(f"serve.max_len={serve.max_len} is negative; use 0 (model.max_len) or a length")
    if not 0 <= serve.port < 65536:
        raise InputError(f"serve.port={serve.port} is not a TCP port; use 1-65535 (0: any free port)")


LAMBDA_SCHEDULES = ("constant", "warmup", "decay")


def validate_finetune(config: ConfigDict) -> None:
    f = config.finetune
    if config.task.kind and not config.task.train_file:
        raise InputError(f"task.kind={config.task.kind!r} needs its data: set task.train_file (JSONL or CSV)")
    if config.task.train_file and not config.task.kind:
        raise InputError(
            "task.train_file needs task.kind: classification, regression, tokens, span_qa, seq2seq or chat"
        )
    if not config.task.name and not config.task.train_file:
        raise InputError(
            "mode=finetune needs task.name (e.g. rotten_tomatoes) or task.train_file with task.kind "
            "(experiments/configs/finetune_files.py)"
        )
    for key in ("pretrain_lambda", "l2sp"):
        if f[key] < 0:
            raise InputError(f"finetune.{key}={f[key]} is negative; a regulariser's weight must be >= 0")
    if f.lambda_schedule not in LAMBDA_SCHEDULES:
        raise InputError(
            f"finetune.lambda_schedule={f.lambda_schedule!r} is unknown; use one of {LAMBDA_SCHEDULES}"
        )
    if config.optim.grad_accum_steps != 1:
        raise InputError("fine-tuning runs without gradient accumulation; set optim.grad_accum_steps=1")
    if config.task.trim_multiple < 0:
        raise InputError(
            f"task.trim_multiple={config.task.trim_multiple} is negative; use 0 (off) or e.g. 16"
        )
    if config.task.pack and config.task.trim_multiple:
        raise InputError(
            f"task.pack=True and task.trim_multiple={config.task.trim_multiple} both cut padding; packed "
            "rows are full already: set task.trim_multiple=0"
        )
    if not 0 < config.optim.layer_decay <= 1:
        raise InputError(f"optim.layer_decay={config.optim.layer_decay} must be in (0, 1]")


def unknown_key_message(error: Exception, config: ConfigDict, argv: Sequence[str] = ()) -> str | None:
    """One line for a `--config.a.b=...` override in `argv` that names no key of `config` (else for the error
    a misspelt key raised), or None if neither is the case."""
    keys = list(_flat_keys(config))
    sections = {k.rsplit(".", 1)[0] for k in keys if "." in k}
    for arg in argv:
        name = arg.removeprefix("--config.").split("=", 1)[0]
        if arg.startswith("--config.") and name not in keys and name not in sections:
            return _unknown_override(name, arg, keys, sections)
    text = str(error)
    match = re.search(r'instead of "(\w+)"', text) or re.search(r"""['"]([A-Za-z_]\w*)['"]""", text)
    if match is None or not ("Did you mean" in text or "does not exist" in text or "locked" in text):
        return None
    bad = match.group(1)
    close = difflib.get_close_matches(bad, [k.rsplit(".", 1)[-1] for k in keys], n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"unknown config key {bad!r}.{hint} Valid keys: {', '.join(keys)}"


def _unknown_override(name: str, arg: str, keys: list[str], sections: set[str]) -> str:
    """The nearest key of the override's section (or the nearest section), and that section's keys."""
    section, _, leaf = name.rpartition(".")
    if section in sections or not section:
        siblings = [k for k in keys if k.rpartition(".")[0] == section]
        close = difflib.get_close_matches(leaf, [k.rpartition(".")[2] for k in siblings], n=1)
        hint = f"did you mean '{f'{section}.' if section else ''}{close[0]}'? " if close else ""
        where = f"{section}'s keys" if section else "top-level keys"
        options = ", ".join(k.rpartition(".")[2] for k in siblings)
    else:
        tops = sorted({k.split(".")[0] for k in sections})
        close = difflib.get_close_matches(name.split(".")[0], tops, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        where, options = "the sections", ", ".join(tops)
    return f"unknown config key {name!r} in {arg.split('=', 1)[0]}; {hint}{where}: {options}"


def _flat_keys(config: ConfigDict, prefix: str = ""):
    for k, v in config.items():
        if isinstance(v, ConfigDict):
            yield from _flat_keys(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"
