"""Helpers of the test suite: paths, the tiny recipe's settings, test-only labels, fairseq's task set-up.

Fixtures live in ``conftest.py``; everything here is imported as ``from tests.helpers import ...``.
"""

import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, Iterable, List, Tuple

import numpy as np
import soundfile as sf

from fedhubert_plugin.federation.server.runlog import read_metrics, validations
from fedhubert_plugin.federation.settings import FederationSettings
from fedhubert_plugin.targets.feature_files import utterance_features
from fedhubert_plugin.targets.labels import write_dictionary
from fedhubert_plugin.toy_data import DEV_SUBSET, TRAIN_SUBSET

REPO = Path(__file__).resolve().parents[1]
PLUGIN_DIR = REPO / "fedhubert_plugin"
RECIPES = REPO / "recipes" / "librispeech" / "pretrain"
TINY = str(RECIPES / "tiny.yaml")
TINY_STUDENT = str(REPO / "recipes" / "librispeech" / "distill" / "tiny_student.yaml")
LABEL_RATE = 100
ENERGY_BINS = 8
N_CLUSTERS = 100
# the lr schedule that a run of 3 rounds x 3 local updates derives (the ``federated_run`` fixture): a shorter run
# compared with it, or resumed to its length, names it, since the schedule is otherwise sized to each run's own length
SCHEDULE_OF_3_ROUNDS = ["optimization.max_update=9", "lr_scheduler.warmup_updates=1"]

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")


class Nodes:
    """Stands in for Flower's Grid where a strategy samples nodes: ``count`` SuperNodes connected, ids 1..count."""

    def __init__(self, count: int):
        self.count = count

    def get_node_ids(self):
        return list(range(1, self.count + 1))


def teacher_tensors_in_tiny_student(names) -> set:
    """The tiny student's tensors that the tiny teacher's fit (same name and shape; width 64 against 128):
    the conv extractor, its layer norm, the label embeddings, the final projection's bias (final_dim 64 in
    both) and the positional convolution's gain (1x1x16 at any width)."""
    fitting = {k for k in names if k.startswith(("feature_extractor.", "layer_norm."))}
    return fitting | {"label_embs_concat", "final_proj.bias", "encoder.pos_conv.0.weight_g"}


def energy_labels(wav: np.ndarray) -> list:
    """Test-only frame targets at 100 Hz: log energy of 25 ms frames quantised into bins.

    They stand in for `fedhubert prepare`'s k-means labels; the count per utterance is the
    one fairseq's HuBERT dataset expects at label rate 100.
    """
    frames = 1 + (len(wav) - 400) // 160
    energy = np.array([np.log1p(np.sum(wav[i * 160 : i * 160 + 400] ** 2)) for i in range(frames)])
    edges = np.quantile(energy, np.linspace(0, 1, ENERGY_BINS + 1)[1:-1])
    return np.digitize(energy, edges).tolist()


def write_split(shard: Path, name: str, flacs: list, root: Path) -> None:
    """A manifest and energy labels for ``flacs`` in a client folder."""
    lines = [str(root)]
    labels = []
    for flac in flacs:
        wav, _ = sf.read(flac, dtype="float32")
        lines.append(f"{flac.relative_to(root)}\t{len(wav)}")
        labels.append(" ".join(map(str, energy_labels(wav))))
    (shard / f"{name}.tsv").write_text("\n".join(lines) + "\n")
    (shard / "labels" / f"{name}.km").write_text("\n".join(labels) + "\n")


def write_energy_dictionary(shard: Path) -> None:
    """``dict.km.txt`` of the energy labels."""
    write_dictionary(shard / "labels" / "dict.km.txt", ENERGY_BINS)


def prepare_argv(root: Path, out: Path, *options: str, clients: int = 4, subsets=(TRAIN_SUBSET, DEV_SUBSET)) -> list:
    """``fedhubert prepare`` arguments for the toy LibriSpeech at ``root`` (utterances of 1 s and more kept)."""
    common = ["--librispeech-root", str(root), "--subsets", *subsets, "--num-clients", str(clients), "--out", str(out)]
    return ["prepare", *common, "--min-seconds", "1.0", *options]


def setup_fed_task(shard: Path, **overrides):
    """fairseq's own task set-up (dataclass defaults merged) for a client folder."""
    from fairseq import tasks
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(
        {
            "_name": "fed_hubert_pretraining",
            "data": str(shard),
            "label_dir": str(shard / "labels"),
            "labels": ["km"],
            "label_rate": 100,
            **overrides,
        }
    )
    return tasks.setup_task(cfg)


def fairseq_env() -> dict:
    """The environment of a fairseq subprocess: unbuffered, two threads."""
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2")


def fairseq_hydra_train(config_dir: Path, config_name: str, overrides: list, run_dir: Path) -> str:
    """Plain ``fairseq-hydra-train`` of ``config_name`` on CPU with the plugin as ``common.user_dir``, in
    ``run_dir``; its log (stdout and stderr). Fails with the log's tail unless it exits 0."""
    cmd = [
        str(Path(sys.executable).parent / "fairseq-hydra-train"),
        "--config-dir",
        str(config_dir),
        "--config-name",
        config_name,
        *overrides,
        f"common.user_dir={PLUGIN_DIR}",
        "common.cpu=true",
        f"hydra.run.dir={run_dir}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=fairseq_env(), timeout=600, cwd=run_dir)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    return log


def metric_lines(save_dir: Path) -> list:
    """The server's ``metrics.jsonl`` of a run saved in ``save_dir``, one dict per round."""
    return read_metrics(save_dir)


def valid_losses(save_dir: Path) -> Dict[int, float]:
    """The validation loss of each validated global model of a run, by the round that made it (0: initial)."""
    return {rnd: v["metrics"]["loss"] for rnd, v in validations(read_metrics(save_dir)).items()}


def pretrain_settings(prepared, save_dir, rounds, **kwargs) -> FederationSettings:
    """Settings of a federated run (default: the tiny recipe, 3 local updates) on the `prepared` clients."""
    defaults = dict(
        recipe=TINY,
        label_rate=100,
        n_clusters=N_CLUSTERS,
        data_root=str(prepared),
        overrides=["common.cpu=true"],
        local_updates=3,
        min_train_nodes=2,
        min_available_nodes=4,
    )
    return FederationSettings(save_dir=str(save_dir), num_server_rounds=rounds, **{**defaults, **kwargs})


def pooled_features(folders, extractor) -> np.ndarray:
    """The train features of every client folder, computed afresh and concatenated (clients delete theirs)."""
    return np.concatenate(
        [feats for folder in folders for _, feats, _ in utterance_features(folder / "train.tsv", extractor)]
    )


def recipe_differences(theirs: Dict, ours: Dict, sections: Iterable[str], intended: Dict) -> List[Tuple]:
    """(section, key, fairseq's value, ours) for every value fairseq's recipe ``theirs`` sets in ``sections`` that
    our composed recipe ``ours`` does not hold, but for the ``intended`` (section, key) differences and the values
    fairseq leaves to the command line (``???``)."""
    return [
        (section, key, value, ours[section].get(key))
        for section in sections
        for key, value in theirs[section].items()
        if (section, key) not in intended and value != "???" and ours[section].get(key) != value
    ]


def write_bigram_lm(sentences: List[List[str]], folder: Path) -> Tuple[Path, Path]:
    """A small bigram language model of ``sentences`` in ARPA format (KenLM reads bigrams and up), and its lexicon
    (``WORD<TAB>W O R D |``): ``folder/lm.arpa``, ``folder/lexicon.txt``. Bigram: half the mass on seen pairs."""
    words = Counter(w for sentence in sentences for w in sentence)
    pairs = Counter((a, b) for s in sentences for a, b in zip(["<s>", *s], [*s, "</s>"]))
    starts = Counter(a for a, _ in pairs.elements())
    total = sum(words.values()) + len(sentences)
    unigrams = {**{w: c / total for w, c in words.items()}, "</s>": len(sentences) / total}
    half = math.log10(0.5)
    lines = ["\\data\\", f"ngram 1={len(unigrams) + 2}", f"ngram 2={len(pairs)}", "", "\\1-grams:"]
    lines += [f"-99\t<s>\t{half:.4f}", "-99\t<unk>"]
    lines += [f"{math.log10(p):.4f}\t{w}\t{half:.4f}" for w, p in sorted(unigrams.items())]
    lines += ["", "\\2-grams:"]
    lines += [f"{math.log10(0.5 * c / starts[a]):.4f}\t{a} {b}" for (a, b), c in sorted(pairs.items())]
    lm, lexicon = folder / "lm.arpa", folder / "lexicon.txt"
    lm.write_text("\n".join([*lines, "", "\\end\\", ""]))
    lexicon.write_text("".join(f"{w}\t{' '.join(w)} |\n" for w in sorted(words)))
    return lm, lexicon
