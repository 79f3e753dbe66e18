"""A site that trains on several processes, one per GPU: fairseq's own data-parallel training behind one client.

``SiteTrainer`` has ``LocalTrainer``'s ``fit`` and ``evaluate``. It starts one process per
rank (``torch.multiprocessing``, spawn) when it is built and keeps them until the process that
built it ends (a Ray actor, or a SuperNode's ``trainer_service``, serves every round with the
same ranks). Each rank builds a
``LocalTrainer`` whose config joins fairseq's process group (``distributed_training.*``, then
``fairseq.distributed.utils.distributed_init``): fairseq shards the client's batches across
the ranks and averages their gradients, so the site makes ``local_updates`` updates of
``world size × max_tokens`` samples each (fairseq's convention; ``update_freq`` still
multiplies). Every rank ends a round with the same weights; rank 0's are the site's update.

On GPUs the ranks use NCCL and ``cuda:rank``; without a GPU they run on the CPU with gloo and
fairseq's ``legacy_ddp`` (the one of its DDP backends that runs on CPU), each with an equal
share of the cores. A rank that fails or dies stops the other ranks and the round fails for
this client (the server's usual rules then apply); the next round starts new ranks.
"""

import logging
import os
import queue
import traceback
from typing import Any, Dict, List

import torch
import torch.multiprocessing as mp
from fairseq.distributed import utils as distributed_utils
from omegaconf import open_dict

from fedhubert_plugin.federation.client.local_trainer import LocalTrainer
from fedhubert_plugin.federation.client.work import EvaluateTask, FitTask, TrainerSpec
from fedhubert_plugin.federation.wire import LocalResult
from fedhubert_plugin.ports import free_port

logger = logging.getLogger(__name__)

POLL_SECONDS = 2.0  # how often the coordinator checks that every rank is alive while it waits


def join_process_group(trainer: LocalTrainer, rank: int, world_size: int, port: int) -> None:
    """Set ``trainer``'s config for rank ``rank`` of ``world_size`` and join fairseq's process group."""
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        torch.cuda.set_device(rank)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    with open_dict(trainer.cfg):
        dist = trainer.cfg.distributed_training
        dist.distributed_world_size = world_size
        dist.distributed_rank = rank
        dist.device_id = rank
        dist.distributed_init_method = f"tcp://127.0.0.1:{port}"
        dist.distributed_backend = "nccl" if on_gpu else "gloo"
        if not on_gpu:
            dist.ddp_backend = "legacy_ddp"
    distributed_utils.distributed_init(trainer.cfg)


def serve_rank(rank: int, world_size: int, port: int, spec: TrainerSpec, commands: Any, results: Any) -> None:
    """One rank's life: join the process group, then run each task (``FitTask``, ``EvaluateTask``) until ``None``."""
    try:
        trainer = LocalTrainer(spec)
        join_process_group(trainer, rank, world_size, port)
    except Exception:
        results.put((rank, traceback.format_exc()))
        return
    while (task := commands.get()) is not None:
        try:
            result = task.run_on(trainer)
        except Exception:
            results.put((rank, traceback.format_exc()))
            continue
        if rank:  # every rank holds the same weights: only rank 0 sends them back
            result.arrays = {}
        results.put((rank, result))


class SiteTrainer:
    """``spec.processes`` fairseq data-parallel ranks training one client, kept across rounds."""

    def __init__(self, spec: TrainerSpec):
        world_size = spec.processes
        context = mp.get_context("spawn")
        self.results = context.Queue()
        self.commands = [context.Queue() for _ in range(world_size)]
        port = free_port()
        self.ranks: List[mp.Process] = [
            context.Process(
                target=serve_rank,
                args=(rank, world_size, port, spec, self.commands[rank], self.results),
                daemon=True,
            )
            for rank in range(world_size)
        ]
        for process in self.ranks:
            process.start()
        logger.info(
            "site trainer: %d data-parallel ranks (%s)", world_size, "GPUs" if torch.cuda.is_available() else "CPU"
        )

    @property
    def alive(self) -> bool:
        return all(process.is_alive() for process in self.ranks)

    def fit(self, task: FitTask) -> LocalResult:
        """``LocalTrainer.fit`` on every rank; the site's result (rank 0's)."""
        return self.run(task)

    def evaluate(self, task: EvaluateTask) -> LocalResult:
        """``LocalTrainer.evaluate`` on every rank (fairseq sums their validation); rank 0's result."""
        return self.run(task)

    def run(self, task) -> LocalResult:
        """Send the task to every rank and wait for all; stop the site if a rank fails or dies."""
        method = type(task).__name__
        for commands in self.commands:
            commands.put(task)
        outcomes: Dict[int, LocalResult] = {}
        while len(outcomes) < len(self.ranks):
            try:
                rank, outcome = self.results.get(timeout=POLL_SECONDS)
            except queue.Empty:
                dead = [f"rank {r} (exit code {p.exitcode})" for r, p in enumerate(self.ranks) if not p.is_alive()]
                if dead:
                    self.close()
                    raise RuntimeError(
                        f"site trainer: {', '.join(dead)} ended during {method}; the others stopped"
                    ) from None
                continue
            if isinstance(outcome, str):
                self.close()
                raise RuntimeError(f"site trainer: rank {rank} failed during {method}; the others stopped:\n{outcome}")
            outcomes[rank] = outcome
        return outcomes[0]

    def close(self) -> None:
        """Stop every rank (a rank stuck waiting for a dead one is killed after 5 s)."""
        for commands, process in zip(self.commands, self.ranks):
            if process.is_alive():
                commands.put(None)
        for commands, process in zip(self.commands, self.ranks):
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()
            commands.cancel_join_thread()  # a command no rank will read must not hold this process at exit
            commands.close()
