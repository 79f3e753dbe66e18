"""The one function that chooses where a client's work runs, among the three ``Trainer``s (``work.Trainer``).

``LocalTrainer`` (fairseq's Trainer in this process), ``SiteTrainer`` (fairseq's data-parallel
ranks of a site with several GPUs) and ``ServiceTrainer`` (the SuperNode's kept trainer service,
for Flower's one-message ClientApp processes). ``trainer_for`` chooses when called. This module
imports neither torch nor fairseq until training runs in this process.
"""

from dataclasses import replace
from typing import Dict

from flwr.app import Context

from fedhubert_plugin import one_message_process
from fedhubert_plugin.federation.client.work import Trainer, TrainerSpec
from fedhubert_plugin.federation.nodes import site_processes
from fedhubert_plugin.federation.wire import ClientConfig


def node_trainer(context: Context, config: ClientConfig) -> Trainer:
    """The trainer of this node for the run of ``config``: the node config's ``gpus=N`` (its data-parallel ranks,
    else the run's) and ``num-threads=N`` (its share of the machine's cores) applied."""
    spec = TrainerSpec.of(config)
    processes = site_processes(context, spec.processes)
    return trainer_for(replace(spec, processes=processes), int(context.node_config.get("num-threads", 0)))


def trainer_for(spec: TrainerSpec, threads: int = 0) -> Trainer:
    """Where this process's work runs: on the node's trainer service when Flower started this process for one
    message (deployment), else on the trainer this process keeps (a simulation's Ray actor, or the service
    itself). ``threads``: torch threads for the training (0: as set)."""
    if one_message_process():
        from fedhubert_plugin.federation.client.service_proxy import ServiceTrainer

        return ServiceTrainer(spec, threads)
    return in_process_trainer(spec, threads)


_KEPT: Dict[TrainerSpec, Trainer] = {}


def in_process_trainer(spec: TrainerSpec, threads: int = 0) -> Trainer:
    """This process's trainer of ``spec``, built once and reused by every client it serves (a site whose ranks
    ended is built again; another spec replaces it). SuperNodes sharing one machine should split its cores with
    ``--node-config 'num-threads=N'``: each would take them all."""
    import torch  # only where training runs: never in a one-message ClientApp process

    from fedhubert_plugin.federation.client.local_trainer import LocalTrainer
    from fedhubert_plugin.federation.client.site_trainer import SiteTrainer

    if threads:
        torch.set_num_threads(threads)
    kept = _KEPT.get(spec)
    if kept is None or (isinstance(kept, SiteTrainer) and not kept.alive):
        for previous in _KEPT.values():
            if isinstance(previous, SiteTrainer):
                previous.close()
        _KEPT.clear()
        _KEPT[spec] = SiteTrainer(spec) if spec.processes > 1 else LocalTrainer(spec)
    return _KEPT[spec]
