"""``fedhubert demo``: the whole product in one command, from audio to SUPERB KS and PR.

Phases (each logs ``[phase i/7]``, ``i/8`` with fine-tuning; the tools underneath show their own progress bars):
1. data: the toy corpus (espeak-ng voices), or the given LibriSpeech and Speech Commands;
2. prepare: speaker non-IID clients, MFCC, federated k-means through Flower;
3. pretrain: federated HuBERT (fairseq trainers on Flower, FedAvg);
4. distill: federated distillation of the global model into a smaller student;
   (with ``--finetune-rounds``: federated CTC fine-tuning of the global model on the clients' transcripts);
5. downstream: s3prl keyword spotting, and phoneme recognition on the toy corpus (train, then test
   ``dev-best.ckpt``) for the teacher, the student and the untrained model (random init);
6. probe: what the layers of the same three, and MFCC, know about phones (``fedhubert probe``,
   on the toy corpus's alignments);
7. report: ``OUT/report.md`` with plots and tables, and what pretraining bought.

Every phase keeps its outputs under OUT; a second run reuses finished phases (prepare's
``prepare.json``, the federations' ``--resume``, each downstream run's ``test.json``).
"""

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from fedhubert_plugin.configs import (
    FROM_TRAINED_SERVER,
    DemoConfig,
    DistillConfig,
    from_prepared_data,
)
from fedhubert_plugin.console import Phases
from fedhubert_plugin.downstream import superb_task
from fedhubert_plugin.export import export_initial
from fedhubert_plugin.federation.server.runlog import read_metrics
from fedhubert_plugin.federation.simulation import simulate_pretraining
from fedhubert_plugin.prepare import PrepareConfig, prepare, summary_table
from fedhubert_plugin.probe import ProbeResult, probe, probe_table, write_probe
from fedhubert_plugin.recipes import find_recipe
from fedhubert_plugin.reference_curve import reference_curves
from fedhubert_plugin.report import (
    clients_table,
    downstream_table,
    finetune_summary,
    plot_against_reference,
    plot_run,
    reference_summary,
    rounds_table,
    write_report,
)
from fedhubert_plugin.toy_data import DEV_SUBSET, TRAIN_SUBSET, write_toy_data
from fedhubert_plugin.toy_superb import write_phone_lexicon

logger = logging.getLogger(__name__)

# teacher recipe -> (student recipe, KS config, CTC fine-tuning recipe)
PAIRED = {"tiny": ("tiny_student", "ks_tiny", "tiny_ctc"), "base": ("student", "ks", "base_10h")}
TEACHER, STUDENT, RANDOM_INIT = (
    "teacher (federated HuBERT)",
    "student (federated distillation)",
    "random init (untrained teacher)",
)


def data_phase(cfg: DemoConfig) -> Dict[str, object]:
    """Where the LibriSpeech subsets and the keyword set are: the given ones, or a fresh toy corpus."""
    if cfg.librispeech_root:
        if not cfg.speech_commands_root:
            raise ValueError("--librispeech-root needs --speech-commands-root too (the keyword spotting data)")
        root = Path(cfg.speech_commands_root)
        test_root = Path(cfg.speech_commands_test_root or root / "test")
        train_root = root / "train" if (root / "train").is_dir() and not cfg.speech_commands_test_root else root
        for folder, option in ((train_root, "--speech-commands-root"), (test_root, "--speech-commands-test-root")):
            if not folder.is_dir():  # checked now, not after pretraining
                raise FileNotFoundError(f"keyword spotting folder {folder} not found; check {option}")
        return {
            "librispeech": Path(cfg.librispeech_root),
            "subsets": list(cfg.subsets) or ["train-clean-100"],
            "keywords": train_root,
            "keywords_test": test_root,
            "min_seconds": 2.0,
        }
    toy = cfg.out / "toy"
    if not (toy / "toy_data.json").is_file():
        write_toy_data(toy, seed=cfg.seed, force=True)
    if not (toy / "pr" / "lexicon.txt").is_file():
        write_phone_lexicon(toy / "LibriSpeech", [TRAIN_SUBSET, DEV_SUBSET], toy / "pr")
    return {
        "phones": [toy / "LibriSpeech", toy / "pr" / "phoneme.txt", toy / "pr" / "lexicon.txt"],
        "librispeech": toy / "LibriSpeech",
        "subsets": [TRAIN_SUBSET, DEV_SUBSET],
        "keywords": toy / "speech_commands" / "train",
        "keywords_test": toy / "speech_commands" / "test",
        "min_seconds": 1.0,
        "alignments": toy / "alignments",
    }


def prepare_phase(cfg: DemoConfig, data: Dict) -> Path:
    """Prepared clients in OUT/data (kept from an earlier run when complete)."""
    out = cfg.out / "data"
    if not (out / "prepare.json").is_file():
        summary = prepare(
            PrepareConfig(
                librispeech_root=data["librispeech"],
                subsets=data["subsets"],
                num_clients=cfg.num_clients,
                out=out,
                n_clusters=cfg.n_clusters,
                min_seconds=data["min_seconds"],
                seed=cfg.seed,
            )
        )
        print(summary_table(summary))
    return out


def federation_phase(cfg: DemoConfig, prepared: Path, save_dir: Path, recipe: str, rounds: int, **values: Any) -> Path:
    """A federated run, resumed when OUT holds part of it; ``values`` set more settings."""
    gpus = 1.0 / cfg.num_clients if torch.cuda.is_available() else 0.0
    settings = from_prepared_data(
        str(prepared),
        save_dir=str(save_dir.resolve()),
        recipe=recipe,
        num_server_rounds=rounds,
        local_updates=cfg.local_updates,
        seed=cfg.seed,
        resume=True,
        gpus_per_client=gpus,
        **values,
    )
    simulate_pretraining(settings, settings.min_available_nodes)
    return save_dir


def downstream_phase(cfg: DemoConfig, data: Dict, upstreams: Dict[str, Tuple[str, Path]]) -> Dict[str, Dict]:
    """s3prl keyword spotting of each upstream (folder under OUT/downstream: (label, checkpoint)), by label, with
    its phoneme recognition (OUT/pr/<folder>, PER as ``pr_per``) where the data has a phone lexicon (the toy's)."""
    ks_config, results = find_recipe(PAIRED[cfg.recipe][1]), {}
    for folder, (label, ckpt) in upstreams.items():
        keywords = [data["keywords"], data["keywords_test"]]
        results[label] = superb_task("ks", ckpt, cfg.out / "downstream" / folder, ks_config, keywords)
        if "phones" in data:
            pr = superb_task("pr", ckpt, cfg.out / "pr" / folder, find_recipe("pr_tiny"), data["phones"])
            results[label]["pr_per"] = pr["score"]
        logger.info(
            "KS %s: test accuracy %.3f; PR PER %s", label, results[label]["test_acc"], results[label].get("pr_per")
        )
    return results


def federated_runs(cfg: DemoConfig, phases: Phases, prepared: Path) -> Dict[str, Optional[Path]]:
    """Federated pretraining, the distillation of its best model and, with ``finetune_rounds``, its CTC
    fine-tuning: their save dirs by name (finetune: None when not run)."""
    overrides = list(cfg.overrides)
    teacher_recipe, student_recipe = str(find_recipe(cfg.recipe)), str(find_recipe(PAIRED[cfg.recipe][0]))
    pretrain = phases.run(
        "federated pretraining",
        federation_phase,
        cfg,
        prepared,
        cfg.out / "pretrain",
        teacher_recipe,
        cfg.rounds,
        overrides=overrides,
    )
    teacher = DistillConfig(pretrain / "server" / "checkpoint_best.pt", init_from_teacher=True)
    distill = phases.run(
        "federated distillation",
        federation_phase,
        cfg,
        prepared,
        cfg.out / "distill",
        student_recipe,
        cfg.distill_rounds,
        **FROM_TRAINED_SERVER,
        **teacher.settings(overrides),
    )
    finetune = None
    if cfg.finetune_rounds:  # the recipe's own overrides are the teacher's, not the CTC model's
        finetune = phases.run(
            "federated fine-tuning (CTC)",
            federation_phase,
            cfg,
            prepared,
            cfg.out / "finetune",
            str(find_recipe(PAIRED[cfg.recipe][2])),
            cfg.finetune_rounds,
            **FROM_TRAINED_SERVER,
            init_from=str(teacher.teacher),
        )
    return {"pretrain": pretrain, "distill": distill, "finetune": finetune}


def run_demo(cfg: DemoConfig) -> Path:
    """Run every phase into ``cfg.out``; returns the report's path."""
    if cfg.recipe not in PAIRED:
        raise ValueError(f"--recipe {cfg.recipe!r}: choose one of {', '.join(PAIRED)}")
    cfg.out.mkdir(parents=True, exist_ok=True)
    overrides, teacher_recipe = list(cfg.overrides), str(find_recipe(cfg.recipe))
    phases = Phases(8 if cfg.finetune_rounds else 7)
    data = phases.run("data", data_phase, cfg)
    prepared = phases.run("prepare (federated k-means)", prepare_phase, cfg, data)
    runs = federated_runs(cfg, phases, prepared)
    meta = json.loads((prepared / "prepare.json").read_text())
    random_init = export_initial(
        teacher_recipe, cfg.out / "random_init.pt", meta["n_clusters"], meta["label_rate"], overrides
    )
    upstreams = {  # folder under OUT/downstream: (label, checkpoint)
        "teacher": (TEACHER, runs["pretrain"] / "server" / "best_global_model.pt"),
        "student": (STUDENT, runs["distill"] / "server" / "best_global_model.pt"),
        "random_init": (RANDOM_INIT, random_init),
    }
    results = phases.run(
        "SUPERB keyword spotting and phoneme recognition (s3prl)", downstream_phase, cfg, data, upstreams
    )
    probed = phases.run("phone probe", probe_phase, cfg, data, {label: ckpt for label, ckpt in upstreams.values()})
    report = phases.run("report", make_report, cfg, prepared, runs, results, probed, phases.seconds)
    print(downstream_table(results))
    if probed:
        print(f"{probe_table(probed)}\n{pretraining_verdict(probed, results)}")
    print(f"report: {report}")
    return report


def probe_phase(cfg: DemoConfig, data: Dict, checkpoints: Dict[str, Path]) -> Optional[List[ProbeResult]]:
    """``fedhubert probe`` of the upstreams and MFCC into OUT/probe; None without phone alignments (own data)."""
    if "alignments" not in data:
        return None
    results = probe(checkpoints, data["librispeech"], data["alignments"], TRAIN_SUBSET, DEV_SUBSET, seed=cfg.seed)
    write_probe(results, cfg.out / "probe")
    return results


def pretraining_verdict(probed: List[ProbeResult], downstream: Dict[str, Dict]) -> str:
    """What the teacher gained over random init on each measure, said plainly; where to find the evidence."""
    teacher, random_init = (next(result for result in probed if result.name == name) for name in (TEACHER, RANDOM_INIT))
    gains = {
        "phone accuracy": teacher.best.phone_accuracy - random_init.best.phone_accuracy,
        "transformer layers' phone accuracy": teacher.best_transformer.phone_accuracy
        - random_init.best_transformer.phone_accuracy,
        "PNMI": teacher.best_pnmi - random_init.best_pnmi,
        "KS accuracy": downstream[teacher.name]["test_acc"] - downstream[random_init.name]["test_acc"],
    }
    if "pr_per" in downstream[teacher.name]:  # an error rate in %: the gain is its fall
        gains["PR error rate fall"] = (
            downstream[random_init.name]["pr_per"] - downstream[teacher.name]["pr_per"]
        ) / 100
    figures = ", ".join(f"{name} {gain:+.3f}" for name, gain in gains.items())
    evidence = (
        "One seed on a toy corpus is noise-sized; `benchmarks/quality.py` (results in "
        "`benchmarks/results/quality.md`) trains long enough on a 30-minute corpus, over several seeds, to show "
        "what pretraining buys and how federated compares with centralized."
    )
    if max(gains.values()) <= 0:
        return f"At demo scale pretraining did not beat random init on any measure ({figures}). {evidence}"
    return f"Teacher against random init, best layers: {figures}. {evidence}"


def make_report(
    cfg: DemoConfig,
    prepared: Path,
    runs: Dict[str, Optional[Path]],
    results: Dict,
    probed: Optional[List[ProbeResult]],
    seconds: Dict[str, float],
) -> Path:
    """Plots and ``report.md``; ``runs``: the save dirs of pretrain, distill and finetune (None: not run)."""
    pretrain, distill = runs["pretrain"], runs["distill"]
    pretrain_lines, distill_lines = read_metrics(pretrain), read_metrics(distill)
    plot_run(pretrain_lines, "federated pretraining", cfg.out / "pretrain.png")
    plot_run(distill_lines, "federated distillation", cfg.out / "distill.png")
    plot_against_reference(pretrain_lines, reference_curves(), cfg.out / "reference.png")
    strategy = json.loads((pretrain / "server" / "settings.json").read_text())["strategy"]
    sections = {
        "Data and clients": f"Prepared data: `{prepared}`: speaker non-IID partition, MFCC k-means targets "
        f"learned federated (only per-cluster sums and counts left the clients).\n\n"
        + clients_table(json.loads((prepared / "partition.json").read_text())),
        "Federated pretraining": f"![pretraining](pretrain.png)\n\n{rounds_table(pretrain_lines)}\n\n"
        f"Checkpoints: `{pretrain / 'server'}`; TensorBoard: `{pretrain / 'server' / 'tb'}`.",
        "Pretraining against the reference curves": "![reference](reference.png)\n\n"
        + reference_summary(pretrain_lines, reference_curves(), strategy),
        "Federated distillation": f"![distillation](distill.png)\n\n{rounds_table(distill_lines)}\n\n"
        "KD loss per round: "
        + ", ".join(f"{line['train'].get('kd_loss', float('nan')):.3f}" for line in distill_lines),
        **({} if runs["finetune"] is None else {"Federated fine-tuning (CTC)": finetune_summary(runs["finetune"])}),
        "Downstream: SUPERB keyword spotting and phoneme recognition": downstream_table(results)
        + "\n\ns3prl `speech_commands` and `ctc` (PR: the toy words' espeak-ng phones), frozen upstream, weighted "
        + f"sum of its layers, configs `{PAIRED[cfg.recipe][1]}.yaml`, `pr_tiny.yaml`; logs under "
        + f"`{cfg.out / 'downstream'}`, `{cfg.out / 'pr'}`.",
        "What pretraining bought: phone probe": "Not run: phone alignments are known only for the toy corpus; "
        "run `fedhubert probe` with your alignments (docs/quality.md)."
        if probed is None
        else f"{probe_table(probed)}\n\n![probe](probe/probe.png)\n\nA linear phone classifier and k-means "
        f"(PNMI) on each layer, fitted on the train speakers and scored on held-out speakers; each model's best "
        f"layer, and its best transformer layer (layer 0 is the encoder's input, the conv front end's features; "
        f"layers 1 and up come after transformer layers). {pretraining_verdict(probed, results)}",
    }
    return write_report(cfg.out, sections, seconds)
