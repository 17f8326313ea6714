"""Meshes and the rules table: on every layout every family takes the steps of plain SGD on the mean loss,
written out here with jax.grad on one device (so a wrong gradient scale anywhere in the step fails), sharded
as the rules say."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from lmjax import config as base_config
from lmjax import models, parallel, sharding
from lmjax.training import loop, objectives, optim, pretrain

V, L, B = 32, 16, 8
FAMILIES = {
    "decoder": (dict(family="decoder", positions="rotary"), "causal_lm"),
    "llama": (  # grouped-query attention (2 K/V heads for 4 query heads), RMSNorm, SwiGLU, untied head
        dict(
            family="decoder",
            positions="rotary",
            num_kv_heads=2,
            rope_theta=1e5,
            norm="rmsnorm",
            use_bias=False,
            activation="swiglu",
            tie_embeddings=False,
        ),
        "causal_lm",
    ),
    "encoder": (dict(family="encoder", norm_position="post", embed_norm=True, tie_embeddings=False), "mlm"),
    "encoder_decoder": (
        dict(
            family="encoder_decoder",
            positions="relative",
            norm="rmsnorm",
            use_bias=False,
            activation="geglu",
            share_embeddings=False,
            tie_embeddings=False,
        ),
        "span_corruption",
    ),
}
MESHES = {
    "data=8": (8, 1, 1),
    "fsdp=8": (1, 8, 1),
    "data=2,fsdp=2,tensor=2": (2, 2, 2),
    "tensor=4,data=2": (2, 1, 4),
}
LR, STEPS = 0.5, 3


def mesh_config(data=-1, fsdp=1, tensor=1):
    c = base_config.base().mesh
    c.update(data=data, fsdp=fsdp, tensor=tensor)
    return c


def family_config(family: str, mesh: tuple[int, int, int]) -> ConfigDict:
    c = base_config.base()
    model, objective = FAMILIES[family]
    # Dropout on: its masks must not depend on the layout either.
    c.model.update(
        vocab_size=V, num_layers=1, num_heads=4, d_model=32, d_ff=64, max_len=L, dropout=0.1, **model
    )
    c.data.update(seq_len=L, batch_size=B)
    c.train.objective = objective
    # Plain SGD at a constant rate, no clipping: an update is -LR x the gradient, so its scale is checked too
    # (Adam's update does not change when the gradient is scaled).
    c.optim.update(name="sgd", warmup_steps=0, learning_rate=LR, min_learning_rate=LR, grad_clip=0.0)
    c.mesh.update(data=mesh[0], fsdp=mesh[1], tensor=mesh[2])
    return c


def batch_for(family: str, step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(step)
    tokens = rng.integers(1, V, (B, L)).astype(np.int32)
    weights = (rng.random((B, L)) < 0.8).astype(np.float32)
    batch = {
        "inputs": tokens,
        "targets": rng.integers(1, V, (B, L)).astype(np.int32),
        "weights": weights,
        "input_mask": np.ones((B, L), np.int32),
    }
    if family == "encoder":
        batch |= {
            "segments": (np.arange(L) >= L // 2).astype(np.int32)[None].repeat(B, 0),
            "nsp_labels": rng.integers(0, 2, B).astype(np.int32),
        }
    if family == "encoder_decoder":
        batch["decoder_inputs"] = rng.integers(1, V, (B, L)).astype(np.int32)
    return batch


def run_steps(config: ConfigDict, family: str, devices, steps: int = STEPS):
    s = pretrain.setup(config, devices)
    state = s.to_engine(s.init(jax.random.PRNGKey(0)))
    losses = []
    for i in range(steps):
        state, m = s.train_step(state, s.device_batch(batch_for(family, i)))
        losses.append(float(m["loss"]))
    return s, s.from_engine(state), losses


def reference_sgd(config: ConfigDict, family: str, steps: int = STEPS):
    """The same steps written out on one device: params -= LR * jax.grad(summed loss / target weight), with
    the step's dropout keys. Only the initial state comes from lmjax's init."""
    with jax.default_device(jax.devices()[0]):
        graphdef, init, _ = loop.make_init(
            lambda rngs: models.build(config.model, rngs),
            optim.make(config.optim, config.train.num_steps, config.model),
        )
        state = init(jax.random.PRNGKey(0))
        loss_fn = objectives.get(config.train.objective).make_loss(config.train)

        def mean_loss(params, batch, key):
            model = nnx.merge(graphdef, params)
            outputs = model.forward(batch, deterministic=False, rngs=nnx.Rngs(dropout=key))
            loss_sum, stats = loss_fn(outputs, batch)
            return loss_sum / jnp.maximum(stats["weight"], 1.0)

        params, losses = state.params, []
        for i in range(steps):
            loss, grads = jax.value_and_grad(mean_loss)(
                params, batch_for(family, i), jax.random.fold_in(state.rng, i)
            )
            params = jax.tree.map(lambda p, g: p - LR * g, params, grads)
            losses.append(float(loss))
    return jax.device_get(params), losses


@pytest.fixture(scope="module")
def one_device_runs():
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = reference_sgd(family_config(family, (1, 1, 1)), family)
        return cache[family]

    return get


# The default suite runs every layout of the plain decoder and the three-axis layout of every family; the
# other pairs run in make test-slow.
PAIRS = [
    pytest.param(
        family,
        mesh,
        marks=[] if family == "decoder" or mesh == "data=2,fsdp=2,tensor=2" else [pytest.mark.slow],
        id=f"{family}-{mesh}",
    )
    for family in sorted(FAMILIES)
    for mesh in sorted(MESHES)
]


@pytest.mark.parametrize("family,mesh", PAIRS)
def test_every_layout_takes_the_reference_sgd_steps(family, mesh, one_device_runs):
    ref_params, ref_losses = one_device_runs(family)
    s, state, losses = run_steps(family_config(family, MESHES[mesh]), family, jax.devices())
    np.testing.assert_allclose(losses, ref_losses, rtol=2e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), b, rtol=1e-4, atol=2e-5),
        jax.device_get(state.params),
        ref_params,
    )
    # Each parameter is laid out as the rules table says, on the arrays themselves.
    data, fsdp, tensor = MESHES[mesh]

    def is_var(x):
        return isinstance(x, nnx.Variable)

    for abstract, var in zip(
        jax.tree.leaves(s.abstract_state.params, is_leaf=is_var),
        jax.tree.leaves(state.params, is_leaf=is_var),
        strict=True,
    ):
        x, spec = var.value, s.layout.spec(abstract.get_metadata()["axes"], abstract.value.shape)
        assert x.sharding.spec == spec
        full = tuple(spec) + (None,) * (x.ndim - len(spec))
        per_device = tuple(
            n // int(np.prod([s.mesh.shape[a] for a in ((e,) if isinstance(e, str) else e or ())]))
            for n, e in zip(x.shape, full, strict=True)
        )
        assert x.addressable_shards[0].data.shape == per_device
    embed = state.params["embed_VD"].value
    assert embed.sharding.spec == P("tensor" if tensor > 1 else None, "fsdp" if fsdp > 1 else None)
    if tensor > 1:  # attention heads and the MLP hidden layer are split over the tensor axis
        block = state.params["blocks" if family != "encoder_decoder" else "encoder_blocks"][0]
        assert block["attn"]["query_DHK"].value.sharding.spec[1] == "tensor"
        assert block["mlp"]["up"]["kernel"].value.sharding.spec[1] == "tensor"


def test_default_mesh_puts_all_devices_on_data():
    assert dict(parallel.make_mesh(mesh_config()).shape) == {"data": 8, "fsdp": 1, "tensor": 1}
    assert dict(parallel.make_mesh(mesh_config(2, 2, 2)).shape) == {"data": 2, "fsdp": 2, "tensor": 2}


def test_bad_mesh_and_rules_fail_clearly():
    with pytest.raises(ValueError, match="needs 6 devices but 8 are available"):
        parallel.make_mesh(mesh_config(3, 2, 1))
    with pytest.raises(ValueError, match="at most one axis may be -1"):
        parallel.make_mesh(mesh_config(-1, -1, 1))
    with pytest.raises(ValueError, match=r"mesh.rules.embed='fsdb' names \['fsdb'\], not a mesh axis"):
        sharding.parse_rules(dict(sharding.DEFAULT_RULES, embed="fsdb"))
    c = family_config("decoder", (1, 1, 1))
    c.mesh.engine = "pmap"
    c.mesh.tensor = 2
    with pytest.raises(ValueError, match="mesh.engine='pmap' is data-parallel only"):
        pretrain.setup(c)


def test_undivisible_dimensions_are_replicated_and_rules_are_config():
    layout = parallel.make_layout(mesh_config(2, 2, 2))
    assert layout.spec(("vocab", "embed"), (65, 32)) == P(None, "fsdp")  # 65 characters do not split in two
    assert layout.spec(("batch", "length", "act_embed")) == P(("data", "fsdp"), None, None)
    rules = dict(sharding.DEFAULT_RULES, embed="", mlp="fsdp,tensor")
    layout = parallel.make_layout(ConfigDict(dict(data=2, fsdp=2, tensor=2, rules=rules)))
    assert layout.spec(("embed", "mlp"), (32, 64)) == P(None, ("fsdp", "tensor"))
    # A mesh axis is used once per array: the second logical axis mapped to it is replicated.
    assert layout.spec(("mlp", "mlp"), (64, 64)) == P(("fsdp", "tensor"), None)


def test_pmap_engine_takes_the_reference_sgd_steps():
    c = family_config("decoder", (-1, 1, 1))
    c.model.dropout = (
        0.0  # pmap draws dropout masks per device, so only the dropout-free steps are comparable
    )
    ref_params, ref_losses = reference_sgd(c, "decoder")
    c.mesh.engine = "pmap"
    s, pmap_state, pmap_losses = run_steps(c, "decoder", jax.devices())
    np.testing.assert_allclose(pmap_losses, ref_losses, rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=2e-5),
        jax.device_get(pmap_state.params),
        ref_params,
    )


def test_multi_process_launches_are_detected_from_the_environment():
    assert parallel.cluster_detected({}) is None
    assert parallel.cluster_detected({"SLURM_NTASKS": "8", "SLURM_STEP_ID": "0"}) == "slurm"
    assert parallel.cluster_detected({"SLURM_NTASKS": "1", "SLURM_STEP_ID": "0"}) is None
    assert parallel.cluster_detected({"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3"}) == "tpu"
    assert parallel.cluster_detected({"TPU_WORKER_HOSTNAMES": "localhost"}) is None
    dist = base_config.base().distributed
    assert not parallel.initialize(dist)  # one process here: nothing to start
    dist.update(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=2)
    with pytest.raises(ValueError, match="needs num_processes >= 1 and 0 <= process_id < num_processes"):
        parallel.initialize(dist)
