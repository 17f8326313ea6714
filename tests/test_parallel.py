import jax
import pytest
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from lmjax import parallel, train


def mesh_config(data=-1, fsdp=1, tensor=1):
    return ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))


def test_default_mesh_puts_all_devices_on_data():
    assert dict(parallel.make_mesh(mesh_config()).shape) == {"data": 8, "fsdp": 1, "tensor": 1}
    assert dict(parallel.make_mesh(mesh_config(2, 2, 2)).shape) == {"data": 2, "fsdp": 2, "tensor": 2}


def test_bad_mesh_fails_clearly():
    with pytest.raises(ValueError, match="needs 6 devices but 8 are available"):
        parallel.make_mesh(mesh_config(3, 2, 1))
    with pytest.raises(ValueError, match="at most one axis may be -1"):
        parallel.make_mesh(mesh_config(-1, -1, 1))


def test_parameters_are_sharded_by_the_rules_table(tiny_config):
    tiny_config.model.vocab_size = 16
    tiny_config.mesh.update(data=2, fsdp=2, tensor=2)
    s = train.setup(tiny_config)
    state = s.init(jax.random.PRNGKey(0))
    attn = state.params["blocks"][0]["attn"]
    assert attn["query_DHK"].value.sharding.spec == P("fsdp", "tensor", None)
    assert state.params["embed_VD"].value.sharding.spec == P("tensor", "fsdp")
    assert state.params["blocks"][0]["mlp"]["up"]["kernel"].value.sharding.spec == P("fsdp", "tensor")
    # Adam's moments follow their parameters.
    mu = state.opt_state[1][0].mu
    assert mu["embed_VD"].value.sharding.spec == P("tensor", "fsdp")
    # A [D/fsdp, H/tensor, K] shard really is a quarter of the array on each device.
    q = attn["query_DHK"].value
    assert q.addressable_shards[0].data.shape == (q.shape[0] // 2, q.shape[1] // 2, q.shape[2])
