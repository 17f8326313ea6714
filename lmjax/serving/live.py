"""The model of a workdir's run (or of finetune.init) as a Runner, with serve.quantize and serve.max_len."""

from __future__ import annotations

import dataclasses

from etils import epath
from flax import nnx
from ml_collections import ConfigDict

from lmjax.errors import InputError
from lmjax.serving import functions
from lmjax.serving.runner import Runner
from lmjax.training import pretrained


@dataclasses.dataclass
class Loaded:
    """A decoder ready to serve or export: its functions over flat weights and what describes them."""

    functions: functions.DecoderFunctions
    weights: list
    cache_shape: tuple[int, ...]
    cache_dtype: str
    num_caches: int
    tokenizer: object
    name: str
    source: str

    def runner(self) -> Runner:
        return Runner(
            self.functions.prefill,
            self.functions.step,
            self.weights,
            self.cache_shape,
            self.cache_dtype,
            self.num_caches,
            self.tokenizer,
            self.name,
        )


def cache_len(serve: ConfigDict, max_len: int) -> int:
    if serve.max_len > max_len:
        raise InputError(
            f"serve.max_len={serve.max_len} is longer than the model's positions (model.max_len={max_len}); "
            "use 0 or a smaller length"
        )
    return serve.max_len or max_len


def load(config: ConfigDict, workdir: str | epath.PathLike) -> Loaded:
    graphdef, params, tok, source = pretrained.load_decoder(config, workdir)
    model = nnx.merge(graphdef, params)
    S = cache_len(config.serve, model.max_len)
    shape, dtype, count = functions.cache_spec(model, S)
    del model
    fns, weights = functions.build(graphdef, params, S, config.serve.quantize == "int8")
    name = config.serve.model_name or epath.Path(config.finetune.init or workdir).name
    return Loaded(fns, weights, shape, dtype, count, tok, name, source)
