"""A client trained by several processes with fairseq's data-parallel training (2 CPU ranks, gloo)."""

import numpy as np
import pytest

from fedhubert_plugin.federation.client.local_trainer import LocalTrainer
from fedhubert_plugin.federation.client.trainer import in_process_trainer
from fedhubert_plugin.federation.client.work import EvaluateTask, FitTask, TrainerSpec
from fedhubert_plugin.federation.wire import ClientConfig
from tests.helpers import TINY

SITE = TrainerSpec(TINY, label_rate=100.0, processes=2)


@pytest.fixture
def two_rank_site():
    yield in_process_trainer(SITE)
    in_process_trainer(TrainerSpec(TINY, label_rate=100.0))  # another spec replaces the site: closes its ranks


def one_process(client_shard):
    """A single-process trainer of the shard, and its initial weights."""
    single = LocalTrainer(TrainerSpec(TINY, label_rate=100.0))
    single.client_task(client_shard)
    return single, {k: v.detach().float().numpy().copy() for k, v in single.model.state_dict().items()}


@pytest.mark.e2e
def test_two_ranks_train_one_site_update_and_stay_up_across_rounds(client_shard, two_rank_site):
    site = two_rank_site
    single, start = one_process(client_shard)

    result = site.fit(FitTask(client_shard, start, local_updates=2, server_round=1, validate=True))
    assert result.metrics["updates"] == 2 and np.isfinite(result.metrics["loss"])
    assert result.num_examples == len(single.client_task(client_shard)[1].dataset("train"))
    assert np.isfinite(result.validation["loss"])
    moved = sum(not np.array_equal(result.arrays[name], start[name]) for name in start)
    assert set(result.arrays) == set(start) and moved > len(start) // 2
    # fairseq validated the received weights over both ranks' shards: the loss of one process, up to the
    # masks (each rank draws those of its own batches)
    alone = single.evaluate(EvaluateTask(client_shard, start, round_seed=0))
    assert result.validation["loss"] == pytest.approx(alone.metrics["loss"], rel=0.02)

    pids = [process.pid for process in site.ranks]
    again = site.fit(FitTask(client_shard, result.arrays, num_updates=2, local_updates=2, server_round=2))
    assert again.metrics["updates"] == 2 and [process.pid for process in site.ranks] == pids  # same ranks


@pytest.mark.e2e
def test_a_rank_that_dies_fails_the_round_and_the_next_round_starts_new_ranks(client_shard, two_rank_site):
    site = two_rank_site
    _, start = one_process(client_shard)
    task = FitTask(client_shard, start, local_updates=2, server_round=1)
    site.ranks[1].kill()
    with pytest.raises(RuntimeError, match="rank 1 .*ended during FitTask"):
        site.fit(task)
    assert not site.alive
    fresh = in_process_trainer(SITE)
    assert fresh is not site and fresh.alive
    assert fresh.fit(task).metrics["updates"] == 2


def test_a_node_asks_for_its_ranks_with_gpus_and_simulation_with_gpus_per_client():
    from flwr.app import Context, RecordDict

    from fedhubert_plugin.federation.nodes import site_processes
    from fedhubert_plugin.federation.settings import FederationSettings

    def node(**config):
        return Context(run_id=1, node_id=1, node_config=config, state=RecordDict(), run_config={})

    assert ClientConfig.of(FederationSettings(gpus_per_client=4.0)).site_processes == 4
    assert ClientConfig.of(FederationSettings(gpus_per_client=0.25)).site_processes == 1  # four clients per GPU
    assert site_processes(node(gpus=2), configured=1) == 2  # --node-config 'gpus=2'
    assert site_processes(node(), configured=4) == 4
