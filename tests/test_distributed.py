import pytest

from lmjax import config as base_config
from lmjax import distributed


def test_multi_process_launches_are_detected_from_the_environment():
    assert distributed.cluster_detected({}) is None
    assert distributed.cluster_detected({"SLURM_NTASKS": "8", "SLURM_STEP_ID": "0"}) == "slurm"
    assert distributed.cluster_detected({"SLURM_NTASKS": "1", "SLURM_STEP_ID": "0"}) is None
    assert distributed.cluster_detected({"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3"}) == "tpu"
    assert distributed.cluster_detected({"TPU_WORKER_HOSTNAMES": "localhost"}) is None
    dist = base_config.base().distributed
    assert not distributed.initialize(dist)  # one process here: nothing to start
    dist.update(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=2)
    with pytest.raises(ValueError, match="needs num_processes >= 1 and 0 <= process_id < num_processes"):
        distributed.initialize(dist)
