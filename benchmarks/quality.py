"""Does federated HuBERT learn, and as well as centralized? Issue 15's quality benchmark.

On a synthetic corpus large enough to learn from (default 16 train speakers and 31 minutes, 4
held-out speakers), every run makes the same number of fairseq updates in all, once per seed:

- ``centralized``: plain ``fairseq-hydra-train`` on the union of the clients' data and labels;
- ``fedadam`` and ``fedavg``: federated, speaker non-IID, federated k-means;
- ``fedadam_iid``: federated, utterances dealt at random (IID), federated k-means;
- ``fedadam_local_kmeans``: federated, speaker non-IID, one k-means codebook per client;
- ``random_init``: the recipe's architecture, untrained (seeded).

Each model is scored on the held-out speakers: masked accuracy (fairseq's validation, on labels
from the codebook it trained on; local k-means has none shared), the best layer's linear phone
accuracy and k-means PNMI (``fedhubert probe``), the same for the best transformer layer (layer
1 and up; layer 0 is the conv front end), and s3prl keyword spotting. Then iteration 2:
PNMI of k-means targets made from the trained models' features, federated and centralized
k-means, against the MFCC targets they replace. ``--sweep`` instead tries server learning rates,
tau and local updates for FedAdam at one seed. Results: ``results/quality.{json,md}`` (or
``results/quality_sweep.*``).

    .venv/bin/python benchmarks/quality.py              # about 25 minutes on 2 CPU cores
    .venv/bin/python benchmarks/quality.py --sweep
    .venv/bin/python benchmarks/quality.py --speakers 40 --minutes 60 --rounds 40  # bigger, for a GPU
"""

import argparse
import itertools
import json
import logging
import shutil
import statistics
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import soundfile as sf
from common import RECIPES, RESULTS, fairseq_train, federated, machine_meta, prepare, provenance

from fedhubert_plugin.checkpoints import as_s3prl_state, load_checkpoint
from fedhubert_plugin.data.manifest import write_manifest
from fedhubert_plugin.downstream import superb_task
from fedhubert_plugin.export import random_init_checkpoint
from fedhubert_plugin.federation.client.local_trainer import LocalTrainer
from fedhubert_plugin.federation.client.work import EvaluateTask, TrainerSpec
from fedhubert_plugin.federation.schedule import scheduled_overrides
from fedhubert_plugin.probe import probe
from fedhubert_plugin.targets.features import feature_extractor
from fedhubert_plugin.targets.labels import SPLITS, label_client, remove_cached_features
from fedhubert_plugin.targets.quality import alignment_files, client_labels, label_quality, read_alignments
from fedhubert_plugin.toy_data import DEV_SUBSET, TRAIN_SUBSET, write_toy_data

logger = logging.getLogger("quality")

# prepared data: name -> extra `fedhubert prepare` flags (all of them on the train subset alone)
DATA = {
    "speaker": ("federated", "--partition", "speaker"),
    "iid": ("federated", "--partition", "iid"),
    "speaker_local_kmeans": ("local", "--partition", "speaker"),
}
# trained runs: name -> (prepared data, `fedhubert pretrain` flags); None: centralized fairseq-hydra-train
RUNS = {
    "centralized": None,
    "fedadam": ("speaker", ["--strategy", "fedadam"]),
    "fedavg": ("speaker", ["--strategy", "fedavg"]),
    "fedadam_iid": ("iid", ["--strategy", "fedadam"]),
    "fedadam_local_kmeans": ("speaker_local_kmeans", ["--strategy", "fedadam"]),
}
SWEEP = {"eta": [0.001, 0.003, 0.01, 0.03], "tau": [1e-6, 1e-3], "local_updates": [10, 20]}
KS_CONFIG = RECIPES.parents[1] / "superb" / "ks_tiny.yaml"
PROBE_FRAMES = 20_000
LAYER_KEYS = ("best_layer", "transformer_layer")  # scores that are layer numbers, not measures


def union_folder(
    folders: List[Path], out: Path, kinds: Sequence[str], copied: Sequence[str], labels: str = "."
) -> Path:
    """``folders``' train and valid splits as one folder ``out``: the manifests joined (the first one's audio root),
    each label file kind (``kinds``) under ``labels`` concatenated in the same order, and the first folder's
    ``copied`` files (dictionaries: the same on every client) copied."""
    (out / labels).mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        manifests = [(f / f"{split}.tsv").read_text().splitlines() for f in folders]
        (out / f"{split}.tsv").write_text(
            "\n".join([manifests[0][0]] + [row for m in manifests for row in m[1:]]) + "\n"
        )
        for kind in kinds:
            (out / labels / f"{split}.{kind}").write_text(
                "".join((f / labels / f"{split}.{kind}").read_text() for f in folders)
            )
    for name in copied:
        shutil.copy(folders[0] / labels / name, out / labels / name)
    return out


def union_shard(data: Path, out: Path) -> Path:
    """The centralized baseline's data: every client's train and valid split in one shard (same labels)."""
    clients = sorted((data / "clients").iterdir())
    return union_folder(clients, out, ["km"], ["dict.km.txt", "labels.json"], labels="labels")


def prepared_train(toy: Path, work: Path, name: str, clients: int) -> Path:
    """The train subset of ``toy`` prepared for ``clients`` clients as ``DATA[name]`` says, in ``work/data/name``
    (once: kept when done)."""
    kmeans, *flags = DATA[name]
    return prepare(toy, work / "data" / name, clients, kmeans, "--subsets", TRAIN_SUBSET, *flags)


def heldout_shard(data: Path, librispeech: Path, out: Path) -> Path:
    """The held-out speakers (the dev subset) labelled with ``data``'s k-means codebook, as a fairseq shard."""
    if not (out / "labels" / "labels.json").is_file():
        audio = sorted((librispeech / DEV_SUBSET).rglob("*.flac"))
        rows = [(str(path.relative_to(librispeech)), sf.info(str(path)).frames) for path in audio]
        for split in SPLITS:
            write_manifest(out / f"{split}.tsv", librispeech, rows)
        meta = json.loads((data / "prepare.json").read_text())
        codebook = np.load(data / "kmeans" / "codebook.npy")
        label_client(out, codebook, feature_extractor(meta["features"]), meta["n_clusters"])
        remove_cached_features(out)
        shutil.copy(data / "clients" / "client_000" / "labels" / "labels.json", out / "labels")
    return out


def masked_accuracy(checkpoint: Path, shard: Path) -> float:
    """Masked-frame accuracy of ``checkpoint`` (either format) on ``shard``'s valid split, by fairseq's validation."""
    weights = {k: v.numpy() for k, v in as_s3prl_state(load_checkpoint(checkpoint), checkpoint)["model_weight"].items()}
    trainer = LocalTrainer(TrainerSpec(str(RECIPES / "tiny.yaml"), ("common.cpu=true",), label_rate=100))
    return trainer.evaluate(EvaluateTask(shard, weights)).metrics["acc_masked"]


def train(name: str, spec, seed: int, data: Dict[str, Path], args: argparse.Namespace) -> Dict:
    """One run (``spec`` as in ``RUNS``), saved under ``name``: its checkpoint and wall seconds (kept in
    ``result.json``: a second call reuses a finished run)."""
    save = args.work / "runs" / f"{name}_seed{seed}"
    if (save / "result.json").is_file():
        return json.loads((save / "result.json").read_text())
    total = args.rounds * args.local_updates * args.clients
    overrides = ["common.cpu=true", f"common.seed={seed}", *args.recipe_overrides]
    if spec is None:
        shard = union_shard(data["speaker"], args.work / "central_data")
        # the schedule the federated clients get, sized to this run's updates (the recipe's share of warm-up)
        result = fairseq_train(shard, save, total, "tiny", scheduled_overrides("tiny", overrides, total))
    else:
        prepared, flags = spec
        run_flags = [*flags, "--seed", str(seed), "--min-train-nodes", str(args.clients)]
        result = federated(data[prepared], save, args.rounds, args.local_updates, extra=run_flags, overrides=overrides)
    trained = {"checkpoint": result["checkpoint"], "wall_seconds": result["wall_seconds"]}
    (save / "result.json").write_text(json.dumps(trained) + "\n")
    return trained


def score(models: Dict[str, Path], heldout: Dict[str, Path], toy: Path, work: Path, seed: int) -> Dict[str, Dict]:
    """Masked accuracy (where a shared codebook exists), probe and KS of every model of one seed."""
    probed = probe(
        models, toy / "LibriSpeech", toy / "alignments", TRAIN_SUBSET, DEV_SUBSET, seed=seed, train_frames=PROBE_FRAMES
    )
    scores = {}
    for result in probed:
        scores[result.name] = {"phone_accuracy": result.best.phone_accuracy, "best_layer": result.best.layer}
        scores[result.name]["pnmi"] = result.best_pnmi
        transformer = result.best_transformer
        if transformer is not None:  # MFCC has no transformer layer
            scores[result.name]["transformer_phone_accuracy"] = transformer.phone_accuracy
            scores[result.name]["transformer_layer"] = transformer.layer
            scores[result.name]["transformer_pnmi"] = result.best_transformer_pnmi
        if result.name in models:
            ks = superb_task(
                "ks",
                models[result.name],
                work / "ks" / f"{result.name}_seed{seed}",
                KS_CONFIG,
                [toy / "speech_commands" / "train", toy / "speech_commands" / "test"],
            )
            scores[result.name]["ks_accuracy"] = ks["test_acc"]
        if result.name in heldout:
            scores[result.name]["masked_accuracy"] = masked_accuracy(models[result.name], heldout[result.name])
    return scores


def iteration2(toy: Path, work: Path, checkpoints: Dict[str, Path], mfcc: Path, args: argparse.Namespace) -> Dict:
    """PNMI of iteration-2 targets (federated and centralized k-means of trained features) and of MFCC targets."""
    alignments = toy / "alignments"
    rows = {"MFCC (iteration 1)": mfcc}
    for model, kmeans_clients in (("fedadam", args.clients), ("fedadam", 1), ("centralized", 1)):
        kind = "federated" if kmeans_clients > 1 else "centralized"
        out = work / "data" / f"iteration2_{model}_{kind}_kmeans"
        flags = ("--subsets", TRAIN_SUBSET, "--features", "checkpoint", "--checkpoint", str(checkpoints[model]))
        rows[f"layer {args.layer} of {model}, {kind} k-means"] = prepare(
            toy, out, kmeans_clients, "federated", *flags, "--layer", str(args.layer)
        )
    result = {}
    for name, data in rows.items():
        rate = json.loads((data / "prepare.json").read_text())["label_rate"]
        phones = read_alignments(alignment_files(alignments, rate), rate)
        result[name] = label_quality(phones, client_labels(data)).pnmi
    return result


def spread(values: Sequence[float]) -> Dict[str, float]:
    """Mean, sample standard deviation, min and max over seeds."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "sd": sd, "min": min(values), "max": max(values), "n": len(values)}


def summarize(per_seed: Dict[int, Dict[str, Dict]]) -> Dict[str, Dict[str, Dict]]:
    """For every model and measure that every seed has (scores from before a measure existed lack it): its spread
    over the seeds."""
    models = next(iter(per_seed.values()))
    return {
        model: {
            measure: spread([per_seed[seed][model][measure] for seed in per_seed])
            for measure in models[model]
            if measure not in LAYER_KEYS and all(measure in per_seed[seed][model] for seed in per_seed)
        }
        for model in models
    }


def targets(per_seed: Dict[int, Dict[str, Dict]], summary: Dict) -> List[str]:
    """Issue 15's targets, met or missed, with the figures behind them."""
    lines = []
    random_max = max(scores["random_init"]["phone_accuracy"] for scores in per_seed.values())
    for name in RUNS:
        worst = min(scores[name]["phone_accuracy"] for scores in per_seed.values())
        gain = worst - random_max
        verdict = "met" if gain >= 0.05 else "**missed**"
        lines.append(
            f"- {name} beats random init on the phone probe by ≥ 0.05 on every seed pair: "
            f"worst seed {worst:.3f} − best random seed {random_max:.3f} = {gain:+.3f}, {verdict}"
        )
    for measure in ("masked_accuracy", "phone_accuracy", "transformer_phone_accuracy"):
        if measure not in summary["fedadam"]:  # scores from before the transformer layer was scored
            continue
        ratio = summary["fedadam"][measure]["mean"] / summary["centralized"][measure]["mean"]
        ratios = [scores["fedadam"][measure] / scores["centralized"][measure] for scores in per_seed.values()]
        verdict = "met" if ratio >= 0.95 else "**missed**"
        lines.append(
            f"- federated speaker non-IID (FedAdam) / centralized, {measure.replace('_', ' ')}: {ratio:.3f} "
            f"(per seed {min(ratios):.3f}–{max(ratios):.3f}), target ≥ 0.95, {verdict}"
        )
    return lines


def cell(measure: Dict[str, Dict], key: str) -> str:
    """``mean ± sd`` of one measure, or a dash where the model has none."""
    if key not in measure:
        return "—"
    return f"{measure[key]['mean']:.3f} ± {measure[key]['sd']:.3f}"


def best_layers(per_seed: Dict[int, Dict[str, Dict]], model: str) -> str:
    """Each seed's best layer, then its best transformer layer where scored: ``0 / 2, 0 / 1``."""
    cells = []
    for scores in per_seed.values():
        found = scores[model]
        cells.append(" / ".join(str(found[key]) for key in LAYER_KEYS if key in found))
    return ", ".join(cells)


def table(summary: Dict, walls: Dict[str, List[float]], per_seed: Dict[int, Dict[str, Dict]]) -> List[str]:
    """Markdown: one row per model, mean ± sd over the seeds; the best layers of each seed."""
    keys = ("masked_accuracy", "phone_accuracy", "pnmi", "transformer_phone_accuracy", "transformer_pnmi")
    lines = [
        "| model | masked accuracy, held-out speakers | phone accuracy, best layer | PNMI, best layer | "
        "phone accuracy, best transformer layer | PNMI, best transformer layer | best layer / best transformer "
        "layer, per seed | KS accuracy | train wall s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for model, measure in summary.items():
        wall = f"{statistics.fmean(walls[model]):.0f}" if model in walls else "—"
        cells = [cell(measure, key) for key in keys] + [best_layers(per_seed, model), cell(measure, "ks_accuracy")]
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {wall} |")
    return lines


def corpus(args: argparse.Namespace) -> Path:
    """The synthetic corpus (made once per size and seed 0) and the prepared data of ``DATA``."""
    toy = args.work / f"toy_{args.speakers}spk_{args.minutes:g}min"
    if not (toy / "toy_data.json").is_file():
        write_toy_data(toy, speakers=args.speakers, dev_speakers=4, minutes=args.minutes, workers=2, force=True)
    return toy


def benchmark(args: argparse.Namespace, toy: Path, data: Dict[str, Path]) -> Dict:
    """Every run of ``RUNS`` at every seed, scored; iteration 2 of seed 0's models."""
    heldout = {
        prepared: heldout_shard(data[prepared], toy / "LibriSpeech", args.work / "data" / f"heldout_{prepared}")
        for prepared in ("speaker", "iid")
    }
    per_seed, walls, first = {}, {}, {}
    for seed in args.seeds:
        models = {}
        for name, spec in RUNS.items():
            trained = train(name, spec, seed, data, args)
            models[name] = trained["checkpoint"]
            walls.setdefault(name, []).append(trained["wall_seconds"])
        fresh = args.work / "runs" / f"random_init_seed{seed}.pt"
        models["random_init"] = random_init_checkpoint(models["centralized"], fresh, seed)
        shards = {name: heldout["iid" if name == "fedadam_iid" else "speaker"] for name in RUNS if "local" not in name}
        scores = args.work / f"scores_seed{seed}.json"  # a second call reuses a seed's scores
        if not scores.is_file():
            found = score(models, {**shards, "random_init": heldout["speaker"]}, toy, args.work, seed)
            scores.write_text(json.dumps(found) + "\n")
        per_seed[seed] = json.loads(scores.read_text())
        first = first or models
        logger.info("seed %d: %s", seed, json.dumps(per_seed[seed]))
    summary = summarize(per_seed)
    return {
        "per_seed": per_seed,
        "summary": summary,
        "walls": walls,
        "targets": targets(per_seed, summary),
        "iteration2_pnmi": iteration2(toy, args.work, first, data["speaker"], args),
        "table": table(summary, walls, per_seed),
    }


def sweep(args: argparse.Namespace, data: Dict[str, Path], toy: Path) -> Dict:
    """FedAdam at one seed over ``SWEEP`` (equal total updates): held-out masked accuracy and the probe."""
    heldout = heldout_shard(data["speaker"], toy / "LibriSpeech", args.work / "data" / "heldout_speaker")
    total, seed = args.rounds * args.local_updates, args.seeds[0]
    rows, models = [], {}
    for eta, tau, local_updates in itertools.product(*SWEEP.values()):
        rounds = total // local_updates
        run_args = argparse.Namespace(**{**vars(args), "local_updates": local_updates, "rounds": rounds})
        name = f"sweep_eta{eta:g}_tau{tau:g}_k{local_updates}"
        spec = ("speaker", ["--strategy", "fedadam", "--eta", str(eta), "--tau", str(tau)])
        models[name] = Path(train(name, spec, seed, data, run_args)["checkpoint"])
        row = {"eta": eta, "tau": tau, "local_updates": local_updates, "rounds": rounds}
        rows.append({**row, "name": name, "masked_accuracy": masked_accuracy(models[name], heldout)})
    probed = {
        result.name: result
        for result in probe(
            models,
            toy / "LibriSpeech",
            toy / "alignments",
            TRAIN_SUBSET,
            DEV_SUBSET,
            seed=seed,
            train_frames=PROBE_FRAMES,
        )
    }
    for row in rows:
        row["phone_accuracy"] = probed[row["name"]].best.phone_accuracy
        row["pnmi"] = probed[row["name"]].best_pnmi
        transformer = probed[row["name"]].best_transformer
        row["transformer_phone_accuracy"], row["transformer_layer"] = transformer.phone_accuracy, transformer.layer
    lines = [
        "| server lr (eta) | tau | local updates × rounds | phone accuracy, best layer | PNMI | "
        "phone accuracy, best transformer layer (layer) | masked accuracy |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in sorted(rows, key=lambda r: -r["phone_accuracy"]):
        lines.append(
            f"| {r['eta']:g} | {r['tau']:g} | {r['local_updates']} × {r['rounds']} | {r['phone_accuracy']:.3f} | "
            f"{r['pnmi']:.3f} | {r['transformer_phone_accuracy']:.3f} ({r['transformer_layer']}) | "
            f"{r['masked_accuracy']:.4f} |"
        )
    return {"rows": rows, "table": lines}


def sweep_markdown(result: Dict, args: argparse.Namespace) -> str:
    """results/quality_sweep.md: the runs, best first by the phone probe."""
    meta, total = result["meta"], args.rounds * args.local_updates * args.clients
    lines = [
        provenance(meta),
        "",
        f"FedAdam, speaker non-IID, {args.clients} clients, {total} fairseq updates per run, seed {args.seeds[0]}; "
        f"corpus of {args.speakers} train speakers, {args.minutes:g} min; tiny recipe "
        f"{' '.join(args.recipe_overrides) or 'as it is'}. Probe and masked accuracy on 4 held-out speakers.",
        "",
        *result["table"],
    ]
    return "\n".join(lines) + "\n"


def markdown(result: Dict, args: argparse.Namespace) -> str:
    """results/quality.md: the table, the targets and iteration 2."""
    meta = result["meta"]
    total = args.rounds * args.local_updates * args.clients
    lines = [
        provenance(meta),
        "",
        f"Corpus: {args.speakers} train speakers, {args.minutes:g} min, 4 held-out speakers; {args.clients} clients; "
        f"{total} fairseq updates per run ({args.rounds} rounds × {args.local_updates} local updates × "
        f"{args.clients} clients); tiny recipe, {' '.join(args.recipe_overrides) or 'as it is'}; "
        f"seeds {', '.join(map(str, args.seeds))}: mean ± sd.",
        "",
        *result["table"],
        "",
        *result["targets"],
        "",
        "Iteration 2: PNMI of the targets against phone alignments (the train speakers):",
        "",
        "| targets | PNMI |",
        "| --- | --- |",
        *[f"| {name} | {value:.3f} |" for name, value in result["iteration2_pnmi"].items()],
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speakers", type=int, default=16)
    parser.add_argument("--minutes", type=float, default=31)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--local-updates", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--layer", type=int, default=1, help="iteration 2: the encoder layer to cluster")
    parser.add_argument("--recipe-overrides", nargs="*", default=[], help="KEY=VALUE for the tiny recipe, every run")
    parser.add_argument("--sweep", action="store_true", help="FedAdam's server lr, tau and local updates at one seed")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fedhubert-quality"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")
    toy = corpus(args)
    data = {name: prepared_train(toy, args.work, name, args.clients) for name in DATA}
    name = "quality_sweep" if args.sweep else "quality"
    result = sweep(args, data, toy) if args.sweep else benchmark(args, toy, data)
    result["meta"] = machine_meta()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({**result, "args": vars(args)}, indent=2, default=str) + "\n")
    text = sweep_markdown(result, args) if args.sweep else markdown(result, args)
    (RESULTS / f"{name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
