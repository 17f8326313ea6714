"""Task heads on a pretrained language model (see layers.py for the dimension key; K is the number of labels,
T the texts of a packed batch).

`TaskModel` holds the pretrained model whole under `backbone` (so its own LM head stays available for the
pretraining-loss regulariser) and a new head under `head` (an ELMo backbone adds its task's scalar mix of
layers under `mix`; freeze 'backbone/' to use ELMo as frozen features):

  classification        pooled h_BD -> logits_BK
                        (pooling: cls = first token, mean over real tokens, last real token; a packed
                        batch, task_pipeline.PackTexts, pools each text within its row: logits_TK)
  regression            pooled h_BD -> scores_B (pooled as classification)
  token_classification  h_BLD -> logits_BLK
  span_qa               h_BLD -> start/end logits_BL, restricted to batch['answer_mask']
                        (context tokens + position 0)
  text_to_text          no new parameters: an encoder-decoder's own LM head writes the label (or target)
  language_model        no new parameters: a decoder's own LM head continues a prompt (its loss masked to
                        the answer's tokens by the batch's weights)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lmjax.errors import InputError
from lmjax.models import layers
from lmjax.models.decoder import DecoderLM
from lmjax.models.elmo import ELMo, ScalarMix
from lmjax.models.encoder_decoder import EncoderDecoderLM
from lmjax.models.rnn import RecurrentLM

HEADS = ("classification", "regression", "token_classification", "span_qa", "text_to_text", "language_model")
GENERATES = ("text_to_text", "language_model")  # heads that are the backbone's own LM head
POOLED = ("classification", "regression")  # heads on one vector a text
POOLINGS = ("cls", "mean", "last")


def pool(h_BLD: jax.Array, mask_BL: jax.Array, pooling: str) -> jax.Array:
    """h_BD over the tokens mask_BL marks (one contiguous run per row): their mean, first or last."""
    if pooling == "mean":
        return layers.masked_mean(h_BLD, mask_BL)
    real_BL = mask_BL > 0
    first_B = jnp.argmax(real_BL, axis=1)
    at_B = first_B if pooling == "cls" else first_B + jnp.maximum(jnp.sum(real_BL, axis=1) - 1, 0)
    return jnp.take_along_axis(h_BLD, at_B[:, None, None], axis=1)[:, 0]


def per_text(h_BLD: jax.Array, batch: dict) -> tuple[jax.Array, jax.Array]:
    """(h, mask) with one row per text: a packed batch's texts gathered from their rows (h_TLD, mask_TL: the
    text's own tokens), else the batch's rows as they are."""
    if "text_rows" not in batch:
        return h_BLD, batch["input_mask"]
    rows_T = batch["text_rows"]
    return h_BLD[rows_T], batch["document_ids"][rows_T] == batch["text_documents"][:, None]


class TaskModel(nnx.Module):
    def __init__(
        self,
        backbone: nnx.Module,
        *,
        head: str,
        num_labels: int,
        pooling: str = "cls",
        dropout: float = 0.1,
        rngs: nnx.Rngs,
    ):
        if head not in HEADS:
            raise InputError(f"task head {head!r} is unknown; use one of {HEADS}")
        if pooling not in POOLINGS:
            raise InputError(f"task.pooling={pooling!r} is unknown; use one of {POOLINGS}")
        if (head == "text_to_text") != isinstance(backbone, EncoderDecoderLM) or (
            head == "language_model" and not isinstance(backbone, DecoderLM)
        ):
            raise InputError(
                f"a {type(backbone).__name__} cannot take the {head} head: encoder-decoder models "
                "fine-tune text-to-text, decoders with their LM head or task heads, encoders with "
                "classification / token / span heads"
            )
        if isinstance(backbone, ELMo) and head not in ("classification", "token_classification"):
            raise InputError(f"ELMo features feed classification or token_classification heads, not {head}")
        if isinstance(backbone, (DecoderLM, RecurrentLM)) and head in POOLED and pooling != "last":
            raise InputError(
                f"a causal decoder sees the whole input only at its last token; set task.pooling='last' "
                f"(not {pooling!r})"
            )
        self.backbone, self.kind, self.pooling = backbone, head, pooling
        self.dropout = nnx.Dropout(dropout)
        self.mix = (
            ScalarMix(len(backbone.forward_layers) + 1, rngs=rngs) if isinstance(backbone, ELMo) else None
        )
        d = backbone.feature_dim if isinstance(backbone, ELMo) else backbone.embed_VD.shape[1]
        outputs = dict(
            classification=num_labels, regression=1, token_classification=num_labels, span_qa=2
        ).get(head)
        self.head = layers.Dense(d, outputs, ("embed", None), use_bias=True, rngs=rngs) if outputs else None

    def __call__(self, batch: dict, *, deterministic: bool = True, rngs: nnx.Rngs | None = None) -> dict:
        if self.kind in GENERATES:
            return self.backbone.forward(batch, deterministic=deterministic, rngs=rngs)
        if self.mix is not None:
            h_BLD = self.mix(self.backbone.features(batch["chars"], deterministic=deterministic, rngs=rngs))
        else:
            h_BLD = self.backbone.hidden_states(batch, deterministic=deterministic, rngs=rngs)
        if self.kind in POOLED:
            h_BLD = pool(*per_text(h_BLD, batch), self.pooling)
        y = self.head(self.dropout(h_BLD, deterministic=deterministic, rngs=rngs)).astype(jnp.float32)
        if self.kind == "regression":
            return {"scores": y[..., 0]}
        if self.kind != "span_qa":
            return {"logits": y}
        blocked_BL = jnp.where(batch["answer_mask"] > 0, 0.0, -1e9)
        return {"start_logits": y[..., 0] + blocked_BL, "end_logits": y[..., 1] + blocked_BL}
