"""Learning curves (issue 30): centralized fairseq against FedAvg and FedAdam speaker non-IID, at equal total updates.

The quality benchmark's corpus (16 train speakers, 31 min, 4 held-out speakers) and prepared data. Per seed, one
centralized ``fairseq-hydra-train`` run and a federated run per strategy (4 clients, speaker non-IID), each with its
learning-rate schedule sized to the last point and a checkpoint at every point (fairseq's
``save_interval_updates``; the server's round checkpoints). At every point, on the held-out speakers:

- masked accuracy (fairseq's validation, labels from the run's codebook), beside the majority-cluster rate;
- the phone probe and PNMI of the best layer and of the best transformer layer, beside MFCC and random init;
- the speaker probe of the best layer and the best transformer layer (``fedhubert_plugin.speaker_probe``).

Results: ``results/learning_curve.{json,md}`` and ``results/learning_curve.png`` (one panel per measure against
updates, a band over seeds). Every run and every score is kept under ``--work``: a second call resumes. Each run
kind of ``REFERENCE_KINDS`` trained under ``--work`` also becomes its reference curve in
``fedhubert_plugin/reference_curves.json`` (``docs/training-curves.md``); the other kinds' stored curves are kept.

    .venv/bin/python benchmarks/learning_curve.py            # 3,200 updates, seeds 0 1 2: about 2 h on 2 cores
    .venv/bin/python benchmarks/learning_curve.py --updates 1000 --seeds 0
    .venv/bin/python benchmarks/learning_curve.py --strategies fedavg --no-centralized   # one kind's curve only
    .venv/bin/python benchmarks/learning_curve.py --render   # results/learning_curve.{md,png} from its .json
"""

import argparse
import itertools
import json
import logging
import math
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional

import matplotlib
import numpy as np
from common import REPO, RESULTS, fairseq_train, federated, machine_meta, provenance
from quality import PROBE_FRAMES, corpus, heldout_shard, masked_accuracy, prepared_train, spread, union_shard

from fedhubert_plugin.export import random_init_checkpoint
from fedhubert_plugin.federation.schedule import scheduled_overrides
from fedhubert_plugin.federation.server.runlog import read_metrics, updates_behind
from fedhubert_plugin.probe import probe
from fedhubert_plugin.reference_curve import MEASURES as CURVE_MEASURES
from fedhubert_plugin.reference_curve import REFERENCE_FILE, reference_curves
from fedhubert_plugin.toy_data import DEV_SUBSET, TRAIN_SUBSET

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

logger = logging.getLogger("learning_curve")

REFERENCE_KINDS = ("centralized", "fedavg", "fedadam")  # the run kinds with reference curves
# measure -> what it is, in the table and the plot
MEASURES = {
    "masked_accuracy": "masked accuracy",
    "phone_accuracy": "phone probe, best layer",
    "transformer_phone_accuracy": "phone probe, best transformer layer",
    "transformer_pnmi": "PNMI, best transformer layer",
    "speaker_accuracy": "speaker probe, best layer",
    "transformer_speaker_accuracy": "speaker probe, best transformer layer",
}


def points(args: argparse.Namespace) -> List[int]:
    """The total updates scored: ``args.points`` equal steps up to ``args.updates``, each a whole round."""
    per_round = args.local_updates * args.clients
    step = args.updates // args.points
    if step % per_round or args.updates % args.points:
        raise SystemExit(f"--updates / --points must be a multiple of a round's {per_round} updates")
    return [step * i for i in range(1, args.points + 1)]


def train(name: str, seed: int, data: Path, args: argparse.Namespace) -> Dict[int, str]:
    """One run to ``args.updates``; its checkpoint at each point (kept in ``checkpoints.json``: a second call reuses
    a finished run)."""
    save = args.work / "runs" / f"{name}_seed{seed}"
    done = save / "checkpoints.json"
    if done.is_file():
        return {int(k): v for k, v in json.loads(done.read_text()).items()}
    overrides = ["common.cpu=true", f"common.seed={seed}"]
    at, per_round = points(args), args.local_updates * args.clients
    if name == "centralized":
        shard = union_shard(data, args.work / "central_data")
        every = [f"checkpoint.save_interval_updates={at[0]}", "checkpoint.keep_interval_updates=-1"]
        fairseq_train(shard, save, args.updates, "tiny", scheduled_overrides("tiny", overrides, args.updates) + every)
        # fairseq names a checkpoint by epoch and update; the last one is checkpoint_last.pt
        found = {p: next((save / "checkpoints").glob(f"checkpoint_*_{p}.pt"), None) for p in at[:-1]}
        found[at[-1]] = save / "checkpoints" / "checkpoint_last.pt"
        missing = [p for p, path in found.items() if path is None]
        if missing:
            raise SystemExit(f"{save}: no checkpoint at updates {missing} (fairseq skips one that ends an epoch)")
    else:
        flags = ["--strategy", name, "--seed", str(seed), "--min-train-nodes", str(args.clients)]
        federated(data, save, args.updates // per_round, args.local_updates, extra=flags, overrides=overrides)
        found = {p: save / "server" / f"checkpoint_round{p // per_round}.pt" for p in at}
    checkpoints = {p: str(path) for p, path in found.items()}
    done.write_text(json.dumps(checkpoints) + "\n")
    return checkpoints


def validation_series(name: str, save: Path) -> Dict[str, List[float]]:
    """A run's validations: ``updates`` (in all: every client's, summed) and ``CURVE_MEASURES``. Centralized:
    fairseq's ``valid`` lines; federated: the server's ``metrics.jsonl``, each model at the updates behind it."""
    series = {"updates": [], **{measure: [] for measure in CURVE_MEASURES}}
    if name == "centralized":
        fairseq_names = {"loss": "valid_loss", "acc_masked": "valid_correct_m_0", "acc_unmasked": "valid_correct_u_0"}
        for line in (save / "train.log").read_text().splitlines():
            if "[valid][INFO]" in line:
                stats = json.loads(line[line.index("{") :])
                series["updates"].append(int(stats["valid_num_updates"]))
                for measure, key in fairseq_names.items():
                    series[measure].append(float(stats[key]))
        return series
    lines = read_metrics(save)
    behind = updates_behind(lines)
    for line in lines:
        for validation in line["validations"]:
            series["updates"].append(behind[validation["model_round"]])
            for measure in CURVE_MEASURES:
                series[measure].append(validation["metrics"][measure])
    return series


def finished_seeds(work: Path, name: str) -> List[int]:
    """The seeds whose run ``name`` is trained under ``work``, whatever this call runs."""
    return sorted(
        int(p.parent.name.rsplit("_seed", 1)[1]) for p in (work / "runs").glob(f"{name}_seed*/checkpoints.json")
    )


def reference_kind(name: str, saves: List[Path], updates: int, source: str) -> Dict:
    """One run kind's reference curve from its runs (``saves``, one per seed): the validation curves on a grid of 20
    points up to ``updates``, their band (min, max) and mean over the runs, and where they come from."""
    grid = np.linspace(updates / 20, updates, 20)
    found = [validation_series(name, save) for save in saves]
    run = {"source": source, "updates": [int(u) for u in grid]}
    for measure in CURVE_MEASURES:
        values = np.array([np.interp(grid, s["updates"], s[measure]) for s in found])
        run[measure] = {
            edge: [round(float(v), 4) for v in getattr(values, edge)(axis=0)] for edge in ("min", "max", "mean")
        }
    return run


def store_reference(kinds: Dict[str, Dict]) -> Dict:
    """``fedhubert_plugin/reference_curves.json`` with the curves of ``kinds`` (``reference_kind``'s) in place of
    their stored ones, the other kinds' kept; ``docs/training-curves.png`` draws them."""
    reference = reference_curves() if REFERENCE_FILE.is_file() else {"recipe": "tiny", "runs": {}}
    runs = {**reference["runs"], **kinds}
    reference["runs"] = {kind: runs[kind] for kind in REFERENCE_KINDS if kind in runs}
    REFERENCE_FILE.write_text(json.dumps(reference, indent=1) + "\n")
    plot_reference(reference, REPO / "docs" / "training-curves.png")
    return reference


def write_reference(args: argparse.Namespace, names: List[str]) -> Dict:
    """The reference curve of each reference kind among ``names`` trained under ``args.work``, over its seeds."""
    kinds = {}
    for name in [n for n in names if n in REFERENCE_KINDS]:
        seeds = finished_seeds(args.work, name)
        if not seeds:
            continue
        how = "" if name == "centralized" else f", {args.clients} clients, {args.local_updates} local updates a round"
        source = (
            f"benchmarks/learning_curve.py, seeds {', '.join(map(str, seeds))}, {args.speakers} train speakers, "
            f"{args.minutes:g} min{how}"
        )
        saves = [args.work / "runs" / f"{name}_seed{seed}" for seed in seeds]
        kinds[name] = reference_kind(name, saves, args.updates, source)
    return store_reference(kinds)


def plot_reference(reference: Dict, out: Path) -> Path:
    """Validation loss, masked and unmasked accuracy against updates: each run kind's band over seeds and mean."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    labels = {"loss": "validation loss (bits)", "acc_masked": "masked accuracy", "acc_unmasked": "unmasked accuracy"}
    for ax, measure in zip(axes, CURVE_MEASURES):
        for name, curve in reference["runs"].items():
            band = curve[measure]
            ax.plot(curve["updates"], band["mean"], label=name)
            ax.fill_between(curve["updates"], band["min"], band["max"], alpha=0.25)
        ax.set_xlabel("fairseq updates in all")
        ax.set_title(labels[measure], fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle("tiny recipe, reference curves: band over seeds and mean (docs/training-curves.md)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def majority_rate(shard: Path) -> float:
    """The share of the most frequent cluster among the held-out frames: what always guessing it scores."""
    labels = (shard / "labels" / "valid.km").read_text().split()
    return Counter(labels).most_common(1)[0][1] / len(labels)


def probe_scores(result) -> Dict[str, float]:
    """One ``probe.ProbeResult`` as ``MEASURES`` (the transformer ones absent for MFCC), with the layers."""
    scores = {
        "phone_accuracy": result.best.phone_accuracy,
        "phone_layer": result.best.layer,
        "pnmi": result.best_pnmi,
        "speaker_accuracy": result.best_speaker.speaker_accuracy,
    }
    transformer = result.transformer_layers
    if transformer:
        best = max(transformer, key=lambda score: score.phone_accuracy)
        scores.update(
            transformer_phone_accuracy=best.phone_accuracy,
            transformer_layer=best.layer,
            transformer_pnmi=max(score.pnmi for score in transformer),
            transformer_speaker_accuracy=max(score.speaker_accuracy for score in transformer),
        )
    return scores


def score_seed(seed: int, runs: Dict[str, Dict[int, str]], toy: Path, heldout: Path, work: Path) -> Dict:
    """Every checkpoint of one seed's runs, MFCC and random init, scored (kept in ``scores_seed{seed}.json``; a
    second call scores only the models it lacks)."""
    cached = work / f"scores_seed{seed}.json"
    scores = json.loads(cached.read_text()) if cached.is_file() else {}
    models = {f"{name}@{p}": Path(c) for name, checkpoints in runs.items() for p, c in checkpoints.items()}
    last = runs["centralized"][max(runs["centralized"])]
    models["random_init"] = random_init_checkpoint(Path(last), work / "runs" / f"random_init_seed{seed}.pt", seed)
    models = {name: path for name, path in models.items() if name not in scores}
    if not models:
        return scores
    splits = (toy / "LibriSpeech", toy / "alignments", TRAIN_SUBSET, DEV_SUBSET)
    for result in probe(models, *splits, seed=seed, train_frames=PROBE_FRAMES):
        scores[result.name] = probe_scores(result)
    for name, path in models.items():
        scores[name]["masked_accuracy"] = masked_accuracy(path, heldout)
    cached.write_text(json.dumps(scores) + "\n")
    return scores


def curves(per_seed: Dict[int, Dict], at: List[int], names: List[str]) -> Dict[str, Dict[str, List[Dict]]]:
    """Per run (``names``) and measure, its spread over the seeds at every point."""
    return {
        name: {
            measure: [spread([per_seed[seed][f"{name}@{p}"][measure] for seed in per_seed]) for p in at]
            for measure in MEASURES
        }
        for name in names
    }


def updates_to_reach(target: float, at: List[int], values: List[float]) -> Optional[int]:
    """Where a straight line in log(updates) through the curve reaches ``target`` (up to the next hundred); None if
    it does not rise."""
    slope, intercept = np.polyfit(np.log(at), values, 1)
    return math.ceil(math.exp((target - intercept) / slope) / 100) * 100 if slope > 0 else None


def extrapolated(seed: int, goal: float, at: List[int], curve: List[float]) -> str:
    """Where seed ``seed``'s ``curve`` (its values at ``at``), straight in log updates, reaches ``goal``."""
    reach = updates_to_reach(goal, at, curve)
    if reach is None:
        return f" (seed {seed}'s curve does not rise: " + ", ".join(f"{v:.3f}" for v in curve) + ")"
    if reach > 10 * at[-1]:
        return f" (seed {seed}'s curve, straight in log updates, stays below it to {10 * at[-1]:,})"
    return f" (seed {seed}'s curve, straight in log updates, reaches it near {reach:,})"


def targets(per_seed: Dict[int, Dict], at: List[int], majority: float, names: List[str]) -> List[str]:
    """Issue 30's targets at the last point, met or missed per seed, with the extrapolation where missed."""
    last, lines = at[-1], []

    def verdict(name: str, measure: str, goal: Dict[int, float], what: str) -> None:
        values = {seed: scores[f"{name}@{last}"][measure] for seed, scores in per_seed.items()}
        met = [seed for seed in values if values[seed] >= goal[seed]]
        cells = ", ".join(f"seed {seed} {values[seed]:.3f} / {goal[seed]:.3f}" for seed in values)
        line = f"- {name}, {what}: {cells}: {'met' if len(met) == len(values) else '**missed**'}"
        if len(met) < len(values):
            seed = min(values, key=lambda s: values[s] - goal[s])
            line += extrapolated(seed, goal[seed], at, [per_seed[seed][f"{name}@{p}"][measure] for p in at])
        lines.append(line)

    for name in names:
        verdict(name, "masked_accuracy", dict.fromkeys(per_seed, 3 * majority), "masked accuracy ≥ 3× majority")
        mfcc = {seed: scores["MFCC"]["phone_accuracy"] for seed, scores in per_seed.items()}
        verdict(name, "transformer_phone_accuracy", mfcc, "best transformer layer's phone probe ≥ MFCC's")
        pnmi = {seed: scores["MFCC"]["pnmi"] for seed, scores in per_seed.items()}
        verdict(name, "transformer_pnmi", pnmi, "best transformer layer's k-means PNMI > MFCC's")
    for strategy, measure in itertools.product(names[1:], ("masked_accuracy", "transformer_phone_accuracy")):
        ratios = {
            seed: [s[f"{strategy}@{p}"][measure] / s[f"centralized@{p}"][measure] for p in at]
            for seed, s in per_seed.items()
        }
        line = f"- {strategy} / centralized, {MEASURES[measure]}, per seed: "
        line += ", ".join(f"{r[-1]:.3f}" for r in ratios.values()) + ": target ≥ 0.95, "
        if min(r[-1] for r in ratios.values()) >= 0.95:
            lines.append(line + "met")
            continue
        seed = min(ratios, key=lambda s: ratios[s][-1])
        lines.append(line + "**missed**" + extrapolated(seed, 0.95, at, ratios[seed]))
    return lines


def table(per_seed: Dict[int, Dict], at: List[int], majority: float, names: List[str]) -> List[str]:
    """Markdown: every run at every point, MFCC and random init; mean ± sd over the seeds."""
    lines = [
        "| model | updates | " + " | ".join(MEASURES.values()) + " |",
        "| --- | --- | " + " | ".join("---" for _ in MEASURES) + " |",
    ]
    rows = [(f"{name}@{p}", name, f"{p:,}") for name in names for p in at]
    rows += [("MFCC", "MFCC", "—"), ("random_init", "random init", "0")]
    for key, label, updates in rows:
        cells = []
        for measure in MEASURES:
            values = [per_seed[seed][key][measure] for seed in per_seed if measure in per_seed[seed][key]]
            found = spread(values) if values else None
            cells.append(f"{found['mean']:.3f} ± {found['sd']:.3f}" if found else "—")
        lines.append(f"| {label} | {updates} | " + " | ".join(cells) + " |")
    lines.append(f"| always the most frequent cluster | — | {majority:.3f} |" + " — |" * (len(MEASURES) - 1))
    return lines


def plot(per_seed: Dict[int, Dict], at: List[int], majority: float, names: List[str], out: Path) -> Path:
    """One panel per measure against updates: each run's mean over the seeds, its min–max band; MFCC and random
    init as levels (the majority-cluster rate and 3× it for masked accuracy)."""
    found = curves(per_seed, at, names)
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for ax, (measure, label) in zip(axes.flat, MEASURES.items()):
        for name in names:
            points_ = found[name][measure]
            ax.plot(at, [p["mean"] for p in points_], "-o", label=name)
            ax.fill_between(at, [p["min"] for p in points_], [p["max"] for p in points_], alpha=0.2)
        if measure == "masked_accuracy":
            levels = {"majority cluster": majority, "3× majority": 3 * majority}
        else:
            base = measure.replace("transformer_", "")
            levels = {"MFCC": np.mean([s["MFCC"][base] for s in per_seed.values() if base in s["MFCC"]])}
            levels["random init"] = np.mean([s["random_init"][measure] for s in per_seed.values()])
        for (level, value), style in zip(levels.items(), (":", "--")):
            ax.axhline(value, color="grey", linestyle=style, label=level)
        ax.set_xlabel("fairseq updates in all")
        ax.set_title(label, fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle(f"tiny recipe, held-out speakers, seeds {', '.join(map(str, per_seed))}: mean and min–max")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def markdown(result: Dict, args: argparse.Namespace) -> str:
    """results/learning_curve.md: the table, the targets and the plot."""
    at = ", ".join(f"{p:,}" for p in result["points"])
    federated = " and ".join(args.strategies)
    seeds = ", ".join(map(str, args.seeds))
    lines = [
        provenance(result["meta"]),
        "",
        f"Corpus: {args.speakers} train speakers, {args.minutes:g} min, 4 held-out speakers. Centralized "
        f"`fairseq-hydra-train` on all the train speakers against {federated} over {args.clients} clients (speaker "
        f"non-IID, {args.local_updates} local updates a round), {args.updates:,} updates in all each (every "
        f"client's, summed), one learning-rate schedule to the end, scored at {at}; tiny recipe; seeds {seeds}: "
        "mean ± sd. PNMI: k-means (100 clusters) of the layer's train-speaker frames scored on the held-out "
        "speakers' phones, the way iteration-2 targets are made. Speaker probe: 4 held-out speakers (chance 0.25).",
        "",
        *result["table"],
        "",
        *result["targets"],
        "",
        "![learning curves](learning_curve.png)",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=3200, help="total fairseq updates of each run")
    parser.add_argument("--points", type=int, default=4)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--local-updates", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--speakers", type=int, default=16)
    parser.add_argument("--minutes", type=float, default=31)
    parser.add_argument("--strategies", nargs="+", default=["fedavg", "fedadam"], help="federated runs")
    parser.add_argument("--train-only", action="store_true", help="train the runs, score nothing")
    parser.add_argument(
        "--no-centralized",
        action="store_true",
        help="train only the --strategies runs and write their reference curves; score nothing",
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/fedhubert-curves"))
    parser.add_argument("--render", action="store_true", help="write the results again from the stored .json")
    args = parser.parse_args()
    if args.render:
        return render()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")
    points(args)  # checked before anything runs
    toy = corpus(args)
    data = prepared_train(toy, args.work, "speaker", args.clients)
    heldout = heldout_shard(data, toy / "LibriSpeech", args.work / "data" / "heldout_speaker")
    names = args.strategies if args.no_centralized else ["centralized", *args.strategies]
    runs = {(name, seed): train(name, seed, data, args) for seed in args.seeds for name in names}
    logger.info("trained: %s", json.dumps({f"{n}_seed{s}": c for (n, s), c in runs.items()}))
    write_reference(args, names)
    if args.train_only or args.no_centralized:
        return
    at, majority = points(args), majority_rate(heldout)
    per_seed = {
        seed: score_seed(seed, {name: runs[name, seed] for name in names}, toy, heldout, args.work)
        for seed in args.seeds
    }
    write({"meta": machine_meta(), "points": at, "majority_rate": majority, "per_seed": per_seed}, args, names)


def write(result: Dict, args: argparse.Namespace, names: List[str]) -> None:
    """results/learning_curve.{json,md,png} from the scores of ``result`` (its table and targets made here)."""
    per_seed, at, majority = result["per_seed"], result["points"], result["majority_rate"]
    result = {
        **result,
        "table": table(per_seed, at, majority, names),
        "targets": targets(per_seed, at, majority, names),
    }
    RESULTS.mkdir(exist_ok=True)
    plot(per_seed, at, majority, names, RESULTS / "learning_curve.png")
    (RESULTS / "learning_curve.json").write_text(json.dumps({**result, "args": vars(args)}, indent=2, default=str))
    text = markdown(result, args)
    (RESULTS / "learning_curve.md").write_text(text)
    print(text)


def render() -> None:
    """results/learning_curve.{md,png} again from the stored .json (no run)."""
    stored = json.loads((RESULTS / "learning_curve.json").read_text())
    args = argparse.Namespace(**stored.pop("args"))
    write(stored, args, ["centralized", *args.strategies])


if __name__ == "__main__":
    main()
