"""FedAdam's server lr, tau and local updates where learning shows (issue 30, item 4), over seeds.

The 240-update sweep (``quality.py --sweep``, section 4b) chose ``--eta 1e-2 --tau 1e-6`` with 10 local updates
before anything had learned. At 3,200 updates FedAvg beats that FedAdam on every measure (section 15), so the
choice is checked again at ``--updates`` (default 1,600: held-out masked accuracy is 2-3 times the majority rate
there) on the quality corpus, speaker non-IID, 4 clients:

- every run of ``CONFIGS`` at the first seed, scored on the held-out speakers (masked accuracy, the best
  transformer layer's phone probe and PNMI);
- the default (the first of ``CONFIGS``) and the ``--confirm`` best others by masked accuracy at the other seeds;
- at every seed, centralized ``fairseq-hydra-train`` with one FedAvg round's batches in each update
  (``optimization.update_freq`` = clients): the FedAvg runs' sequential updates, lr schedule and compute, without
  federation. FedAvg's global model takes a quarter of the updates in all, each from four clients' batches, so
  this, not a centralized run of as many updates in all, is what speaker non-IID federation alone costs.

``--keep-stored`` starts from the scores stored in ``results/fedadam_sweep.json`` (the runs themselves are not
kept), so that only what they lack is trained.

Results: ``results/fedadam_sweep.{json,md}``. ``--fedavg-reference`` writes the FedAvg runs' validation curves
as the reference curve of ``fedhubert pretrain``'s default strategy (``docs/training-curves.md``) instead.

    .venv/bin/python benchmarks/fedadam_sweep.py      # about 2 hours on 2 CPU cores
    .venv/bin/python benchmarks/fedadam_sweep.py --fedavg-reference
    .venv/bin/python benchmarks/fedadam_sweep.py --keep-stored      # the large-batch baseline only: 40 min
"""

import argparse
import json
import logging
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from common import RESULTS, fairseq_train, machine_meta, provenance
from learning_curve import reference_kind, store_reference
from quality import corpus, heldout_shard, masked_accuracy, prepared_train, spread, train, union_shard

from fedhubert_plugin.federation.schedule import scheduled_overrides
from fedhubert_plugin.probe import probe
from fedhubert_plugin.toy_data import DEV_SUBSET, TRAIN_SUBSET

logger = logging.getLogger("fedadam_sweep")

# (strategy, server lr, tau, local updates); the first is FedAdam's default settings, the last FedAvg
CONFIGS: List[Tuple[str, Optional[float], Optional[float], int]] = [
    ("fedadam", 0.01, 1e-6, 10),
    ("fedadam", 0.03, 1e-3, 10),
    ("fedadam", 0.1, 1e-3, 10),
    ("fedadam", 0.1, 1e-3, 40),
    ("fedavg", None, None, 10),
]
MEASURES = ("masked_accuracy", "transformer_phone_accuracy", "transformer_pnmi")
LARGE_BATCH = "centralized_large_batch"  # centralized, one FedAvg round's batches per update


def config_name(config: Tuple) -> str:
    """``fedadam_eta0.01_tau1e-06_k10``, ``fedavg_k10``."""
    strategy, eta, tau, local_updates = config
    server = f"_eta{eta:g}_tau{tau:g}" if eta is not None else ""
    return f"{strategy}{server}_k{local_updates}"


def run(config: Tuple, seed: int, data: Path, args: argparse.Namespace) -> Path:
    """One federated run of ``config`` to ``args.updates`` in all: its last global checkpoint."""
    strategy, eta, tau, local_updates = config
    flags = ["--strategy", strategy] + (["--eta", str(eta), "--tau", str(tau)] if eta is not None else [])
    rounds = args.updates // (local_updates * args.clients)
    run_args = argparse.Namespace(**{**vars(args), "local_updates": local_updates, "rounds": rounds})
    name = f"sweep{args.updates}_{config_name(config)}"
    return Path(train(name, ("speaker", flags), seed, {"speaker": data}, run_args)["checkpoint"])


def large_batch_run(seed: int, data: Path, args: argparse.Namespace) -> Path:
    """Centralized fairseq on every client's data, ``args.clients`` batches per update (fairseq's ``update_freq``),
    for ``args.updates / args.clients`` updates under the schedule the FedAvg clients get: its last checkpoint."""
    save = args.work / "runs" / f"sweep{args.updates}_{LARGE_BATCH}_seed{seed}"
    done = save / "result.json"
    if not done.is_file():
        updates = args.updates // args.clients
        overrides = ["common.cpu=true", f"common.seed={seed}", f"optimization.update_freq=[{args.clients}]"]
        shard = union_shard(data, args.work / "central_data")
        result = fairseq_train(shard, save, updates, "tiny", scheduled_overrides("tiny", overrides, updates))
        done.write_text(json.dumps(result) + "\n")
    return Path(json.loads(done.read_text())["checkpoint"])


def scores(models: Dict[str, Path], heldout: Path, toy: Path, seed: int) -> Dict[str, Dict[str, float]]:
    """Held-out masked accuracy and the best transformer layer's phone probe and PNMI of each model."""
    found = {name: {"masked_accuracy": masked_accuracy(path, heldout)} for name, path in models.items()}
    for result in probe(models, toy / "LibriSpeech", toy / "alignments", TRAIN_SUBSET, DEV_SUBSET, seed=seed):
        if result.name in found:
            found[result.name]["transformer_phone_accuracy"] = result.best_transformer.phone_accuracy
            found[result.name]["transformer_pnmi"] = result.best_transformer_pnmi
    return found


def seed_scores(configs: List[Tuple], seed: int, data: Path, heldout: Path, toy: Path, args) -> Dict[str, Dict]:
    """Every config of ``configs`` trained and scored at ``seed`` (kept in ``scores_seed<seed>.json``, extended
    when more configs run at that seed)."""
    kept = args.work / f"sweep{args.updates}_scores_seed{seed}.json"
    found = json.loads(kept.read_text()) if kept.is_file() else {}
    todo = {config_name(c): run(c, seed, data, args) for c in configs if config_name(c) not in found}
    if LARGE_BATCH not in found:
        todo[LARGE_BATCH] = large_batch_run(seed, data, args)
    if todo:
        found.update(scores(todo, heldout, toy, seed))
        kept.write_text(json.dumps(found) + "\n")
    return {name: found[name] for name in [*map(config_name, configs), LARGE_BATCH]}


def restore_stored_scores(args: argparse.Namespace) -> str:
    """The per-seed scores of ``results/fedadam_sweep.json`` (same ``--updates``) into the work folder's score
    files, where these lack them; the provenance of the run that trained them."""
    path = RESULTS / "fedadam_sweep.json"
    if not path.is_file():
        raise SystemExit(f"{path} not found: --keep-stored starts from a stored sweep; drop it to run the whole sweep")
    stored = json.loads(path.read_text())
    if stored["args"]["updates"] != args.updates:
        raise SystemExit(f"{path} is at {stored['args']['updates']} updates; drop --keep-stored")
    for seed, stored_scores in stored["per_seed"].items():
        kept = args.work / f"sweep{args.updates}_scores_seed{seed}.json"
        found = json.loads(kept.read_text()) if kept.is_file() else {}
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_text(json.dumps({**stored_scores, **found}) + "\n")
    return stored.get("stored_from") or provenance(stored["meta"])


def table(per_seed: Dict[int, Dict[str, Dict]], args: argparse.Namespace) -> List[str]:
    """Markdown: one row per config, best first by mean masked accuracy, then the large-batch baseline; mean ± sd
    over the seeds each ran at."""
    lines = [
        "| strategy | server lr (eta) | tau | local updates × rounds | seeds | masked accuracy | "
        "phone probe, best transformer layer | PNMI, best transformer layer |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for config in sorted(CONFIGS, key=lambda c: -spread_of(per_seed, config_name(c))["masked_accuracy"]["mean"]):
        strategy, eta, tau, k = config
        server = [f"{eta:g}", f"{tau:g}"] if eta is not None else ["—", "—"]
        rounds = args.updates // (k * args.clients)
        scores = seeds_and_scores(per_seed, config_name(config))
        lines.append(f"| {strategy} | {' | '.join(server)} | {k} × {rounds} | {scores} |")
    lines.append(
        f"| centralized, {args.clients} batches per update | — | — | {args.updates // args.clients:,} updates | "
        f"{seeds_and_scores(per_seed, LARGE_BATCH)} |"
    )
    return lines


def ran_at(per_seed: Dict[int, Dict[str, Dict]], name: str) -> List[int]:
    """The seeds ``name`` ran at."""
    return [seed for seed in per_seed if name in per_seed[seed]]


def spread_of(per_seed: Dict[int, Dict[str, Dict]], name: str) -> Dict[str, Dict[str, float]]:
    """Each measure's spread over the seeds ``name`` ran at."""
    return {m: spread([per_seed[seed][name][m] for seed in ran_at(per_seed, name)]) for m in MEASURES}


def seeds_and_scores(per_seed: Dict[int, Dict[str, Dict]], name: str) -> str:
    """A table row's seeds cell and its score cells: the mean, and ± sd where ``name`` ran at several seeds."""
    seeds = ran_at(per_seed, name)
    cells = [
        f"{s['mean']:.3f}" + (f" ± {s['sd']:.3f}" if len(seeds) > 1 else "") for s in spread_of(per_seed, name).values()
    ]
    return " | ".join([", ".join(map(str, seeds)), *cells])


def against_default(per_seed: Dict[int, Dict[str, Dict]]) -> List[str]:
    """Each config that ran at every seed, against the default, seed by seed."""
    default, lines = config_name(CONFIGS[0]), []
    for config in CONFIGS[1:]:
        name = config_name(config)
        if not all(name in scores for scores in per_seed.values()):
            continue
        for measure in MEASURES:
            diffs = [per_seed[s][name][measure] - per_seed[s][default][measure] for s in per_seed]
            better = sum(d > 0 for d in diffs)
            lines.append(
                f"- {name} − {default}, {measure.replace('_', ' ')}, per seed: "
                f"{', '.join(f'{d:+.3f}' for d in diffs)} (better on {better} of {len(diffs)})"
            )
    return lines


def against_large_batch(per_seed: Dict[int, Dict[str, Dict]]) -> List[str]:
    """FedAvg over the centralized run with as many sequential updates and batches, seed by seed."""
    fedavg, lines = config_name(CONFIGS[-1]), []
    for measure in MEASURES:
        ratios = [per_seed[s][fedavg][measure] / per_seed[s][LARGE_BATCH][measure] for s in per_seed]
        lines.append(
            f"- {fedavg} / centralized with a round's batches per update, {measure.replace('_', ' ')}, per seed: "
            + ", ".join(f"{r:.3f}" for r in ratios)
        )
    return lines


def write_fedavg_reference(data: Path, args: argparse.Namespace) -> None:
    """The FedAvg runs (``CONFIGS``' last, every seed; trained here if missing) as the fedavg reference curve of
    ``fedhubert_plugin/reference_curves.json`` (``docs/training-curves.md``)."""
    fedavg = CONFIGS[-1]
    saves = [run(fedavg, seed, data, args).parents[1] for seed in args.seeds]
    source = (
        f"benchmarks/fedadam_sweep.py's FedAvg runs, seeds {', '.join(map(str, args.seeds))}, {args.speakers} train "
        f"speakers, {args.minutes:g} min, {args.clients} clients, {fedavg[3]} local updates a round, "
        f"{args.updates:,} updates in all"
    )
    store_reference({"fedavg": reference_kind("fedavg", saves, args.updates, source)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speakers", type=int, default=16)
    parser.add_argument("--minutes", type=float, default=31)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--updates", type=int, default=1600, help="fairseq updates in all (every client's, summed)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--confirm", type=int, default=1, help="the best others also run at every seed")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fedhubert-quality"))
    parser.add_argument(
        "--fedavg-reference", action="store_true", help="write the FedAvg runs' curves as the fedavg reference; stop"
    )
    parser.add_argument(
        "--keep-stored", action="store_true", help="start from the scores in results/fedadam_sweep.json"
    )
    args = parser.parse_args()
    args.recipe_overrides = []
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")
    toy = corpus(args)
    data = prepared_train(toy, args.work, "speaker", args.clients)
    if args.fedavg_reference:
        return write_fedavg_reference(data, args)
    heldout = heldout_shard(data, toy / "LibriSpeech", args.work / "data" / "heldout_speaker")
    stored_from = restore_stored_scores(args) if args.keep_stored else None
    first, *others = args.seeds
    per_seed = {first: seed_scores(CONFIGS, first, data, heldout, toy, args)}
    ranked = sorted(CONFIGS[1:], key=lambda c: -per_seed[first][config_name(c)]["masked_accuracy"])
    confirmed = [CONFIGS[0], *ranked[: args.confirm]]
    for seed in others:
        per_seed[seed] = seed_scores(confirmed, seed, data, heldout, toy, args)
    result = {"meta": machine_meta(), "per_seed": per_seed, "table": table(per_seed, args), "args": vars(args)}
    if stored_from:
        result["stored_from"] = stored_from
    result["against_default"] = against_default(per_seed)
    result["against_large_batch"] = against_large_batch(per_seed)
    text = "\n".join(
        [
            provenance(result["meta"]),
            f"\nThe runs whose scores were kept (`--keep-stored`) trained in: {stored_from}" if stored_from else "",
            "",
            f"Speaker non-IID, {args.clients} clients, {args.updates:,} fairseq updates in all per run (every "
            f"client's, summed), one learning-rate schedule to the end; corpus of {args.speakers} train speakers, "
            f"{args.minutes:g} min; tiny recipe; scored on 4 held-out speakers (majority cluster 0.042). Every "
            f"config at seed {first}; FedAdam's default (eta 0.01, tau 1e-6; `fedhubert pretrain`'s before FedAvg) "
            f"and the {args.confirm} best other(s) by masked accuracy at seed {first} also at seeds "
            f"{', '.join(map(str, others))}: mean ± sd over the seeds each ran at. The last row: centralized "
            f"`fairseq-hydra-train` with {args.clients} batches per update (`optimization.update_freq`) for "
            f"{args.updates // args.clients:,} updates, the FedAvg clients' schedule: the sequential updates, batches "
            f"and schedule of a FedAvg run, without federation.",
            "",
            *result["table"],
            "",
            *result["against_default"],
            *result["against_large_batch"],
        ]
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fedadam_sweep.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (RESULTS / "fedadam_sweep.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
