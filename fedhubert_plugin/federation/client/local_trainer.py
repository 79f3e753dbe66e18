"""One client's local HuBERT training and validation with fairseq's own Trainer.

The recipe is the yaml a user gives ``fairseq-hydra-train``; the client's manifests and
labels and the label rate are filled in. Model and criterion are built once per process
and kept (a Ray worker serving many virtual clients reuses them); a client's task and
dataset index are kept per client folder, for the ``CACHED_CLIENTS`` served last. Each round
builds a fresh fairseq ``Trainer`` around them, so the optimizer state never leaks between clients,
and sets its update count so the learning-rate schedule runs across rounds (sized to the run: ``schedule``).
"""

import contextlib
import copy
import json
import logging
import math
import resource
import tempfile
import time
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from fairseq import metrics, tasks
from fairseq.data import iterators
from fairseq.data.data_utils import numpy_seed
from fairseq.trainer import Trainer
from omegaconf import DictConfig, OmegaConf, open_dict

from fedhubert_plugin.data import FINETUNE_DIR
from fedhubert_plugin.federation.client.work import EvaluateTask, FitTask, TrainerSpec
from fedhubert_plugin.federation.schedule import client_schedule
from fedhubert_plugin.federation.wire import NUM_EXAMPLES, UPDATES, LocalResult
from fedhubert_plugin.gpu_peak import keep_peak_across_resets, peak_gpu_mb
from fedhubert_plugin.recipes import compose_recipe

logger = logging.getLogger(__name__)

CACHED_CLIENTS = 16  # clients whose task and dataset index a process keeps, least recently used dropped first

# fairseq's hubert criterion logs these (masked / unmasked prediction accuracy)
METRIC_NAMES = {
    "loss": "loss",
    "ppl": "ppl",
    "correct_m_0": "acc_masked",
    "correct_u_0": "acc_unmasked",
    # criterion hubert_distillation: its terms (bits per masked frame)
    "loss_hubert": "hubert_loss",
    "loss_kd": "kd_loss",
    "loss_hidden": "hidden_loss",
    # criterion ctc, in validation: word and letter error rates (%)
    "wer": "wer",
    "uer": "uer",
}
# criterion ctc's error counts behind its rates, which the server pools over clients (``validation``)
ERROR_COUNTS = {"_w_errors": "word_errors", "_w_total": "words", "_c_errors": "char_errors", "_c_total": "chars"}


@contextlib.contextmanager
def reproducible_masks():
    """Draw fairseq's HuBERT masks from numpy's global RNG while inside.

    fairseq's ``compute_mask_indices`` builds ``np.random.default_rng(None)`` per utterance
    when the model passes no seed (HuBERT does not), i.e. masks come from OS entropy and no
    local round can be reproduced or resumed bit-exactly. Inside this context an unseeded
    ``default_rng`` is seeded from the global RNG, which ``numpy_seed`` controls; the masks
    are as random as before.
    """
    original = np.random.default_rng

    def seeded_default_rng(seed=None):
        return original(np.random.randint(2**31) if seed is None else seed)

    np.random.default_rng = seeded_default_rng
    try:
        yield
    finally:
        np.random.default_rng = original


@contextlib.contextmanager
def reproducible_round(seed: int, round_seed: int, folder: Path):
    """numpy seeded for this client and round, HuBERT masks drawn from it, fairseq metrics kept apart."""
    with numpy_seed(seed, round_seed, zlib.crc32(Path(folder).name.encode())), reproducible_masks():
        with metrics.aggregate(new_root=True) as agg:
            yield agg


def criterion_metrics(agg) -> Dict[str, float]:
    """The criterion's smoothed figures under our names (hubert: loss, ppl, acc_masked, acc_unmasked; ctc in
    validation: loss, wer, uer and the error counts)."""
    stats = agg.get_smoothed_values()
    found = {new: float(stats[old]) for old, new in METRIC_NAMES.items() if old in stats}
    found.update({new: float(agg.get_smoothed_value(old)) for old, new in ERROR_COUNTS.items() if old in agg})
    return found


def crash_dir(folder: Path) -> Path:
    """Where fairseq's Trainer dumps ``crash.pt`` when a step fails (non-finite gradients, an error in the forward
    pass), its only checkpoint on a client: a temporary folder per client, made here. Without it the dump went to the
    recipe's relative ``checkpoints/``, absent in the client's working directory, and its FileNotFoundError hid the
    step's own error (seen with a server learning rate 100 times too high, benchmarks/results/broken_runs.md)."""
    path = Path(tempfile.gettempdir()) / "fedhubert-crash" / Path(folder).name
    path.mkdir(parents=True, exist_ok=True)
    return path


def peak_memory_metrics() -> Dict[str, float]:
    """Peak CPU RSS, and peak GPU memory allocated when a GPU is used (MB)."""
    peak = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        peak["peak_gpu_mb"] = peak_gpu_mb()
    return peak


def master_parameters(trainer: Trainer) -> Dict[str, torch.Tensor]:
    """fairseq's fp32 master copies of the trained parameters by name, when it trains in fp16 or bf16 and keeps
    them (``FP16Optimizer``: a flat buffer with --fp16, one tensor per parameter with --bf16); empty otherwise
    (fp32 training, or --memory-efficient-fp16, which keeps none)."""
    optimizer = trainer.optimizer
    fp32 = getattr(optimizer, "fp32_params", None)
    if fp32 is None:
        return {}
    if isinstance(fp32, list):
        masters = [p.data for p in fp32]
    else:  # one flat buffer (a single device), in the order of the fp16 parameters
        flat, masters, offset = next(iter(fp32.values())).data, [], 0
        for p in optimizer.fp16_params:
            masters.append(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
    names = {id(p): name for name, p in trainer.model.named_parameters()}
    return {names[id(p)]: master for p, master in zip(optimizer.fp16_params, masters) if id(p) in names}


def train_steps(
    trainer: Trainer, cfg: DictConfig, server_round: int, local_updates: int, local_epochs: int
) -> Tuple[int, int, float]:
    """``local_updates`` updates, or ``local_epochs`` epochs, of fairseq's ``trainer`` on its task's train split;
    the updates made, the utterances they saw and the learning rate of the last one."""
    done, utterances, epoch, lr = 0, 0, 1, float(trainer.get_lr())
    while (local_updates and done < local_updates) or (local_epochs and epoch <= local_epochs):
        epoch_itr = trainer.get_train_iterator(
            epoch=server_round * 1000 + epoch, load_dataset=False, disable_iterator_cache=True
        )
        batches = iterators.GroupedIterator(epoch_itr.next_epoch_itr(shuffle=True), cfg.optimization.update_freq[0])
        for samples in batches:
            lr = float(trainer.get_lr())  # the rate this update trains with
            if trainer.train_step(samples) is None:
                continue  # fp16 overflow: fairseq skipped the update
            done += 1
            utterances += sum(len(s["id"]) for s in samples if s)
            if local_updates and done >= local_updates:
                break
        epoch += 1
    return done, utterances, lr


class LocalTrainer:
    """fairseq Trainer for any client folder, from one recipe and its overrides."""

    def __init__(self, spec: TrainerSpec):
        # ++: the key may be absent (fine-tuning recipes, like fairseq's, leave it to the task's default)
        extra = [f"++task.label_rate={spec.label_rate}"] if spec.label_rate else []
        extra += [f"optimization.lr=[{spec.lr}]"] if spec.lr else []
        self.recipe, self.overrides = spec.recipe, list(spec.overrides) + extra
        self.cfg = compose_recipe(spec.recipe, self.overrides)
        if spec.encoder_args:  # fine-tuning: the encoder is built from the pretrained config, not from its file
            with open_dict(self.cfg):
                for key, value in json.loads(spec.encoder_args).items():
                    self.cfg.model[key] = OmegaConf.create(value)
        if self.cfg.common.fp16 and (self.cfg.common.cpu or not torch.cuda.is_available()):
            raise ValueError(
                f"recipe {spec.recipe}: common.fp16=true trains on a GPU only, and this client has none (simulation: "
                "--gpus-per-client 1 or a fraction; deployment: a SuperNode on a GPU machine); on CPU add "
                "common.fp16=false (or common.bf16=true)"
            )
        # a fresh fairseq Trainer per round and client: its start-up notes (shared parameters,
        # memory) would repeat every round in every client's log
        logging.getLogger("fairseq.trainer").setLevel(logging.WARNING)
        keep_peak_across_resets()
        self.model = None
        self.criterion = None
        self.tasks: "OrderedDict[Path, Tuple[DictConfig, object]]" = OrderedDict()
        self.epoch_schedules: Dict[Tuple[Path, int], Tuple[DictConfig, int]] = {}

    def client_task(self, folder: Path):
        """The client's config and task with train and valid loaded (kept for later rounds: the
        ``CACHED_CLIENTS`` used last, so that a process serving hundreds of clients stays bounded)."""
        folder = Path(folder).resolve()
        if folder in self.tasks:
            self.tasks.move_to_end(folder)
        else:
            cfg = copy.deepcopy(self.cfg)
            fine_tuning = cfg.task.fine_tuning
            with open_dict(cfg):
                cfg.task.data = str(folder / FINETUNE_DIR if fine_tuning else folder)
                cfg.task.label_dir = cfg.task.data if fine_tuning else str(folder / "labels")
                if fine_tuning:
                    cfg.model.data = cfg.task.data
                cfg.checkpoint.save_dir = str(crash_dir(folder))
            task = tasks.setup_task(cfg.task)
            task.load_dataset("train")
            task.load_dataset("valid")
            if self.model is None:
                self.model = task.build_model(cfg.model)
                self.criterion = task.build_criterion(cfg.criterion)
            self.tasks[folder] = (cfg, task)
            if len(self.tasks) > CACHED_CLIENTS:
                dropped, _ = self.tasks.popitem(last=False)
                self.epoch_schedules = {k: v for k, v in self.epoch_schedules.items() if k[0] != dropped}
        return self.tasks[folder]

    def epoch_schedule(self, folder: Path, epoch_rounds: int) -> Tuple[DictConfig, int]:
        """With local epochs: the client's config with its lr schedule sized to ``epoch_rounds`` epochs of its
        data (``schedule.client_schedule``), and its updates per epoch."""
        cfg, task = self.client_task(folder)
        key = (Path(folder).resolve(), epoch_rounds)
        if key not in self.epoch_schedules:
            counting = Trainer(cfg, task, self.model, self.criterion)
            batches = len(counting.get_train_iterator(epoch=1, load_dataset=False, disable_iterator_cache=True))
            per_epoch = math.ceil(batches / cfg.optimization.update_freq[0])
            name = Path(folder).name
            scheduled = client_schedule(cfg, self.recipe, self.overrides, epoch_rounds, per_epoch, name)
            self.epoch_schedules[key] = (scheduled, per_epoch)
        return self.epoch_schedules[key]

    def trainer_with(
        self, folder: Path, arrays: Dict[str, np.ndarray], num_updates: int, cfg: Optional[DictConfig] = None
    ) -> Tuple[Trainer, DictConfig, object]:
        """A fresh fairseq Trainer for ``folder`` holding ``arrays``, at update ``num_updates`` of its schedule
        (``cfg``: the client's config with its own schedule, else the run's)."""
        client_cfg, task = self.client_task(folder)
        cfg = cfg or client_cfg
        self.model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()})
        trainer = Trainer(cfg, task, self.model, self.criterion)  # with fp16/bf16: casts the model
        trainer.set_num_updates(num_updates)
        for name, master in master_parameters(trainer).items():  # the global weights' low bits, kept
            master.copy_(torch.from_numpy(np.asarray(arrays[name])))
        return trainer, cfg, task

    def fit(self, task: FitTask) -> LocalResult:
        """One round of local training (``FitTask``), after validating the received weights when it asks."""
        if (task.local_updates > 0) == (task.local_epochs > 0):
            raise ValueError("give exactly one of local_updates and local_epochs")
        start = time.perf_counter()
        validated = self.evaluate(task.validation()) if task.validate else None
        validation_seconds = time.perf_counter() - start
        start = time.perf_counter()
        cfg, num_updates = None, task.num_updates
        if task.local_epochs:
            cfg, per_epoch = self.epoch_schedule(task.folder, task.epoch_rounds or task.local_epochs)
            num_updates = max(0, task.server_round - 1) * task.local_epochs * per_epoch
        trainer, cfg, fairseq_task = self.trainer_with(task.folder, task.arrays, num_updates, cfg)
        setup_seconds = time.perf_counter() - start
        start = time.perf_counter()
        with reproducible_round(cfg.common.seed, task.server_round, task.folder) as agg:
            done, utterances, lr = train_steps(trainer, cfg, task.server_round, task.local_updates, task.local_epochs)
            result = criterion_metrics(agg)
        seconds = time.perf_counter() - start
        result.update(
            **{UPDATES: done},
            seconds=seconds,
            setup_seconds=setup_seconds,
            samples_per_second=utterances / seconds,
            lr=lr,  # of the round's last update
            schedule_position=trainer.get_num_updates() / max(1, cfg.optimization.max_update),
            cached_clients=len(self.tasks),
            **peak_memory_metrics(),
        )
        state = {k: v.detach().float().cpu().numpy() for k, v in trainer.model.state_dict().items()}
        state.update({k: v.detach().cpu().numpy().copy() for k, v in master_parameters(trainer).items()})
        fitted = LocalResult(state, len(fairseq_task.dataset("train")), result)
        if validated is not None:
            fitted.validation = {**validated.metrics, NUM_EXAMPLES: validated.num_examples}
            fitted.metrics["validation_seconds"] = validation_seconds
        return fitted

    def evaluate(self, task: EvaluateTask) -> LocalResult:
        """Validation loss and accuracies of the task's weights on the client's valid split."""
        trainer, cfg, fairseq_task = self.trainer_with(task.folder, task.arrays, 0)
        with reproducible_round(cfg.common.seed, task.round_seed, task.folder) as agg:
            for sample in trainer.get_valid_iterator("valid").next_epoch_itr(shuffle=False):
                trainer.valid_step(sample)
            result = criterion_metrics(agg)
        return LocalResult({}, len(fairseq_task.dataset("valid")), result)
