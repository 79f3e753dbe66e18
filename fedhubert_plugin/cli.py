"""The ``fedhubert`` command line.

Building the parser imports only fairseq (through the plugin's registration) and the
settings declaration: every heavy import (Flower, Ray, s3prl, scikit-learn, TensorBoard)
happens inside the command that needs it, so ``fedhubert --help`` stays fast.
"""

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional

from fedhubert_plugin import console
from fedhubert_plugin.data import PARTITIONS
from fedhubert_plugin.federation import settings as federation_settings
from fedhubert_plugin.targets import FEATURES, KMEANS_MODES

logger = logging.getLogger("fedhubert")
# errors a user can fix from the message alone: printed without a traceback unless -v
USER_ERRORS = (FileExistsError, FileNotFoundError, ValueError, RuntimeError)


def add_toy_data_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "toy-data",
        help="synthesize a LibriSpeech-layout corpus and a Speech-Commands-layout keyword set with espeak-ng",
        description="Write DIR/LibriSpeech/{train-clean-5,dev-clean-2} and DIR/speech_commands/{train,test}.",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (must be empty unless --force)")
    p.add_argument("--speakers", type=int, default=8, help="speakers in the train subset (default 8)")
    p.add_argument("--dev-speakers", type=int, default=2, help="speakers in the dev subset (default 2)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--utterances", type=int, default=6, help="utterances per speaker (default 6)")
    size.add_argument(
        "--minutes",
        type=float,
        help="about this many minutes of train audio instead of --utterances "
        "(e.g. --speakers 40 --minutes 60: a corpus to learn from)",
    )
    p.add_argument("--keyword-speakers", type=int, default=6, help="speakers of the keyword train set (default 6)")
    p.add_argument(
        "--keyword-repeats", type=int, default=2, help="times each keyword speaker says each word (default 2)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=4, help="parallel synthesis processes (default 4)")
    p.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    p.set_defaults(run=run_toy_data)


def run_toy_data(args: argparse.Namespace) -> None:
    from fedhubert_plugin.toy_data import write_toy_data

    summary = write_toy_data(
        args.out,
        speakers=args.speakers,
        dev_speakers=args.dev_speakers,
        utterances_per_speaker=args.utterances,
        minutes=args.minutes,
        keyword_speakers=args.keyword_speakers,
        keyword_repeats=args.keyword_repeats,
        seed=args.seed,
        workers=args.workers,
        force=args.force,
    )
    print(
        f"LibriSpeech root:     {summary.librispeech_root} "
        f"({summary.train_utterances} train, {summary.dev_utterances} dev utterances)"
    )
    print(
        f"Phone alignments:     {summary.alignments_root}/{{100hz,50hz}} ({summary.train_minutes} min of train audio)"
    )
    print(f"Speech Commands root: {summary.speech_commands_root} ({summary.keyword_train_files} files)")
    print(f"Speech Commands test: {summary.speech_commands_test_root} ({summary.keyword_test_files} files)")


def add_prepare_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="partition a LibriSpeech tree into clients with fairseq manifests and k-means labels "
        "(MFCC or a checkpoint's layer)",
        description="Scan LibriSpeech subsets, split them across clients (non-IID by speaker by default), "
        "write fairseq manifests and k-means targets per client under OUT/clients/client_XXX.",
    )
    p.add_argument(
        "--librispeech-root", type=Path, required=True, help="folder holding the subsets (e.g. .../LibriSpeech)"
    )
    p.add_argument("--subsets", nargs="+", required=True, help="e.g. train-clean-100 train-clean-360")
    p.add_argument(
        "--num-clients", type=int, required=True, help="clients to make; 0 with --partition speaker: one per speaker"
    )
    p.add_argument("--out", type=Path, required=True, help="prepared data folder")
    p.add_argument(
        "--partition",
        choices=PARTITIONS,
        default="speaker",
        help="speaker: each speaker on one client (default); iid: utterance-level baseline; "
        "dirichlet: speaker shares ~ Dirichlet(--alpha)",
    )
    p.add_argument(
        "--alpha", type=float, default=0.5, help="Dirichlet concentration (default 0.5; small = more skewed)"
    )
    p.add_argument(
        "--features",
        choices=FEATURES,
        default="hubert",
        help="hubert: 39-dim MFCC+deltas at 100 Hz, iteration 1 (default); seed: 13-dim MFCC at 50 Hz; "
        "checkpoint: layer --layer of --checkpoint at 50 Hz, iteration 2",
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="--features checkpoint: iteration 1's global model "
        "(SAVE/server/checkpoint_best.pt or best_global_model.pt), read by each client from its disk",
    )
    p.add_argument(
        "--layer", type=int, default=0, help="--features checkpoint: encoder layer, 1-based (HuBERT Base: 6)"
    )
    p.add_argument(
        "--kmeans",
        choices=KMEANS_MODES,
        default="federated",
        help="federated: one shared codebook via Flower, only sums and counts leave a client (default); "
        "local: one codebook per client",
    )
    p.add_argument("--n-clusters", type=int, default=100)
    p.add_argument("--valid-fraction", type=float, default=0.1)
    p.add_argument(
        "--min-seconds",
        type=float,
        default=2.0,
        help="skip shorter utterances (default 2.0 s, HuBERT Base's min_sample_size)",
    )
    p.add_argument(
        "--min-count",
        type=int,
        default=5,
        help="federated k-means: a client withholds clusters with fewer frames than this (default 5)",
    )
    p.add_argument(
        "--kmeans-max-iter", type=int, default=10, help="federated k-means: Lloyd steps at most (default 10)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="threads for the scan and the feature extraction, shared out among clients (default: all cores)",
    )
    p.set_defaults(run=run_prepare)


def run_prepare(args: argparse.Namespace) -> None:
    from fedhubert_plugin.prepare import PrepareConfig, prepare, summary_table

    cfg = PrepareConfig(
        librispeech_root=args.librispeech_root,
        subsets=args.subsets,
        num_clients=args.num_clients,
        out=args.out,
        partition=args.partition,
        alpha=args.alpha,
        features=args.features,
        checkpoint=str(args.checkpoint.resolve()) if args.checkpoint else "",
        layer=args.layer,
        kmeans=args.kmeans,
        n_clusters=args.n_clusters,
        valid_fraction=args.valid_fraction,
        min_seconds=args.min_seconds,
        min_count=args.min_count,
        kmeans_max_iter=args.kmeans_max_iter,
        seed=args.seed,
        workers=args.workers,
    )
    print(summary_table(prepare(cfg)))


def run_federation(args: argparse.Namespace, **values) -> None:
    """Simulate the federation of ``args`` on the clients prepared in ``--data-root``; ``values`` set other fields."""
    from fedhubert_plugin.federation.simulation import simulate_pretraining
    from fedhubert_plugin.recipes import find_recipe

    values = {**federation_settings.cli_values(args), "recipe": str(find_recipe(args.recipe)), **values}
    settings = federation_settings.from_prepared_data(**values)
    simulate_pretraining(settings, num_clients=settings.min_available_nodes)
    print(f"checkpoints in {settings.server_dir}; metrics in {settings.server_dir / 'metrics.jsonl'}")


def add_pretrain_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pretrain",
        help="federated HuBERT pretraining of the prepared clients (Flower simulation, fairseq trainers)",
        description="Each round every client trains the global model with fairseq's Trainer on its own shard; "
        "the server aggregates (FedAdam by default) and checkpoints SAVE/server/. Trailing KEY=VALUE "
        "arguments are fairseq/hydra overrides of the recipe (e.g. model.encoder_layers=4).",
    )
    federation_settings.add_options(p)
    p.set_defaults(run=run_federation)


def add_distill_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "distill",
        help="federated knowledge distillation of a frozen teacher into a smaller student",
        description="Same federation as pretrain; each client trains the student with the criterion "
        "hubert_distillation (KD from the teacher + HuBERT loss on its own k-means targets, + layer "
        "regression). The teacher is read from --teacher on each client and never sent.",
    )
    p.add_argument(
        "--teacher",
        type=Path,
        required=True,
        help="teacher checkpoint (SAVE/server/checkpoint_best.pt or best_global_model.pt)",
    )
    p.add_argument("--alpha", type=float, help="KD weight (default: the recipe's, 0.5)")
    p.add_argument("--temperature", type=float, help="KD temperature (default: the recipe's, 2.0)")
    p.add_argument(
        "--hidden-weight", type=float, help="layer regression weight, 0 turns it off (default: the recipe's)"
    )
    p.add_argument(
        "--init-from-teacher",
        action="store_true",
        help="start the student from the teacher's fitting tensors "
        "(mapped layers, conv extractor); the same as --init-from TEACHER",
    )
    federation_settings.add_options(p, **federation_settings.DISTILL_DEFAULTS)
    p.set_defaults(run=run_distill)


def run_distill(args: argparse.Namespace) -> None:
    teacher = args.teacher.resolve()
    if not teacher.is_file():
        raise FileNotFoundError(
            f"teacher {teacher} not found: pass SAVE/server/checkpoint_best.pt of a `fedhubert pretrain` run"
        )
    overrides = [f"criterion.teacher_checkpoint={teacher}"]
    for key, value in (("alpha", args.alpha), ("temperature", args.temperature), ("hidden_weight", args.hidden_weight)):
        if value is not None:
            overrides.append(f"criterion.{key}={value}")
    init = {"init_from": str(teacher)} if args.init_from_teacher else {}
    run_federation(args, overrides=overrides + args.overrides, **init)


def add_label_quality_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "label-quality",
        help="score k-means labels against phone alignments: phone purity, cluster purity, PNMI (fairseq's measures)",
        description="Scores every client's labels of a `fedhubert prepare` folder (--data-root), or any fairseq "
        "manifest and label file (--labels, repeatable), against frame-level phone alignments in the format of "
        "fairseq's examples/hubert/measure_teacher_quality.py (`fedhubert toy-data` writes them to OUT/alignments), "
        "or against Montreal Forced Aligner TextGrids.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data-root", type=Path, help="a `fedhubert prepare` folder: every client's labels")
    source.add_argument(
        "--labels",
        nargs=2,
        action="append",
        type=Path,
        metavar=("MANIFEST", "KM"),
        help="a fairseq manifest and its label file (repeat for more)",
    )
    p.add_argument(
        "--alignments",
        type=Path,
        required=True,
        help="folder of alignment files (*.tsv), or of <rate>hz/ subfolders of them (toy-data's OUT/alignments), "
        "or Montreal Forced Aligner's output folder (*.TextGrid, one per utterance, in any subfolders)",
    )
    p.add_argument("--label-rate", type=float, help="label rate in Hz (default: DATA_ROOT/prepare.json's; else 100)")
    p.add_argument("--splits", nargs="+", default=["train", "valid"], help="with --data-root: splits to score")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    p.set_defaults(run=run_label_quality)


def run_label_quality(args: argparse.Namespace) -> None:
    import json
    from dataclasses import asdict

    from fedhubert_plugin.files import atomic_write_json
    from fedhubert_plugin.targets.quality import (
        alignment_files,
        client_labels,
        label_quality,
        labels_of,
        quality_table,
        read_alignments,
    )

    if args.data_root:
        rate = args.label_rate or json.loads((args.data_root / "prepare.json").read_text())["label_rate"]
        labels, name = client_labels(args.data_root, args.splits), str(args.data_root)
    else:
        rate, labels, name = args.label_rate or 100, labels_of(args.labels), " ".join(str(km) for _, km in args.labels)
    quality = label_quality(read_alignments(alignment_files(args.alignments, rate), rate), labels)
    print(quality_table({name: quality}))
    if args.json:
        atomic_write_json(args.json, {"labels": name, "label_rate": rate, **asdict(quality)})


def add_probe_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "probe",
        help="what each layer of a checkpoint knows about phones: linear phone accuracy and k-means PNMI",
        description="For every layer of each checkpoint (s3prl's hidden_states of hubert_local) and for MFCC: a "
        "frame-level linear phone classifier fitted on --train-subset's speakers and scored on --test-subset's, "
        "and PNMI of k-means (100 clusters) on the same frames. Prints and writes each model's best layer and its "
        "best transformer layer (layer 0 is the encoder's input, the conv front end; 1 and up come after transformer "
        "layers). Writes OUT/probe.{json,md,png}.",
    )
    p.add_argument(
        "--checkpoint",
        action="append",
        required=True,
        metavar="NAME=PATH",
        help="a checkpoint (either format) and the name to show it under; repeat for more",
    )
    p.add_argument("--librispeech-root", type=Path, required=True, help="the corpus the alignments are of")
    p.add_argument("--alignments", type=Path, required=True, help="folder with 100hz/ and 50hz/ alignment files")
    p.add_argument("--train-subset", default="train-clean-5", help="speakers the probes are fitted on")
    p.add_argument("--test-subset", default="dev-clean-2", help="other speakers, the probes are scored on")
    p.add_argument("--random-init", action="store_true", help="also probe each architecture with fresh weights")
    p.add_argument(
        "--train-frames",
        type=int,
        help="fit the probes on at most this many frames of --train-subset, drawn at random "
        "(default: fedhubert_plugin.probe.TRAIN_FRAMES, 100000; 0: all)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(run=run_probe)


def run_probe(args: argparse.Namespace) -> None:
    from fedhubert_plugin.probe import TRAIN_FRAMES, probe, probe_table, write_probe

    checkpoints = {}
    for entry in args.checkpoint:
        name, sep, path = entry.partition("=")
        if not sep or not Path(path).is_file():
            raise FileNotFoundError(f"--checkpoint {entry}: give NAME=PATH of an existing checkpoint")
        checkpoints[name] = Path(path)
    results = probe(
        checkpoints,
        args.librispeech_root,
        args.alignments,
        args.train_subset,
        args.test_subset,
        args.random_init,
        args.seed,
        train_frames=TRAIN_FRAMES if args.train_frames is None else args.train_frames,
    )
    written = write_probe(results, args.out)
    print(probe_table(results))
    print(f"every layer: {written['json']}; plot: {written['png']}")


def add_export_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="write a checkpoint in s3prl's converted HuBERT format (for stock s3prl)",
        description="--checkpoint converts a fairseq-format checkpoint (SAVE/server/checkpoint_best.pt, "
        "fairseq-hydra-train's) or an s3prl one; --initial writes the untrained model of a recipe (the "
        "weights federated round 1 starts from), the random-init baseline for downstream comparisons.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="checkpoint to convert")
    source.add_argument(
        "--initial", metavar="RECIPE", help="recipe (yaml path, or tiny / base) whose initial model to write"
    )
    p.add_argument("--out", type=Path, required=True, help="output .pt file")
    p.add_argument(
        "--n-clusters", type=int, default=100, help="with --initial: k-means clusters of the targets (default 100)"
    )
    p.add_argument("--label-rate", type=float, default=100, help="with --initial: label rate in Hz (default 100)")
    p.add_argument("overrides", nargs="*", help="with --initial: fairseq/hydra overrides of the recipe")
    p.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> None:
    from fedhubert_plugin.export import export_initial, export_s3prl

    if args.checkpoint:
        out = export_s3prl(args.checkpoint, args.out)
    else:
        out = export_initial(args.initial, args.out, args.n_clusters, args.label_rate, args.overrides)
    print(f"wrote {out} (s3prl format: run_downstream.py -u hubert_local -k {out})")


def add_demo_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="the whole pipeline in one command: data, prepare, pretrain, distill, KS downstream, report",
        description="Toy corpus (or your LibriSpeech and Speech Commands) -> 4 speaker non-IID clients with federated "
        "k-means -> federated HuBERT pretraining -> federated distillation -> s3prl keyword spotting for teacher, "
        "student and random init -> OUT/report.md with plots. A rerun reuses finished phases.",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--librispeech-root", type=Path, help="real LibriSpeech root (default: the toy corpus)")
    p.add_argument("--subsets", nargs="+", default=[], help="with --librispeech-root (default train-clean-100)")
    p.add_argument(
        "--speech-commands-root",
        type=Path,
        help="Speech Commands v0.01 train folder, or a folder with train/ and test/",
    )
    p.add_argument("--speech-commands-test-root", type=Path, help="Speech Commands test set folder")
    p.add_argument(
        "--recipe",
        choices=["tiny", "base"],
        default="tiny",
        help="teacher recipe; base pairs with student.yaml and ks.yaml",
    )
    p.add_argument("--num-clients", type=int, default=4)
    p.add_argument("--n-clusters", type=int, default=100)
    p.add_argument("--rounds", type=int, default=5, help="federated pretraining rounds (default 5)")
    p.add_argument("--distill-rounds", type=int, default=5, help="federated distillation rounds (default 5)")
    p.add_argument("--local-updates", type=int, default=10, help="fairseq updates per client per round (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*", help="fairseq/hydra overrides of the recipes")
    p.set_defaults(run=run_demo_command)


def run_demo_command(args: argparse.Namespace) -> None:
    from fedhubert_plugin.demo import DemoConfig, run_demo

    run_demo(
        DemoConfig(
            out=args.out,
            librispeech_root=args.librispeech_root,
            subsets=args.subsets,
            speech_commands_root=args.speech_commands_root,
            speech_commands_test_root=args.speech_commands_test_root,
            recipe=args.recipe,
            num_clients=args.num_clients,
            n_clusters=args.n_clusters,
            rounds=args.rounds,
            distill_rounds=args.distill_rounds,
            local_updates=args.local_updates,
            overrides=args.overrides,
            seed=args.seed,
        )
    )


def add_downstream_parser(subparsers: argparse._SubParsersAction) -> None:
    subparsers.add_parser(
        "downstream",
        add_help=False,
        help="s3prl's run_downstream with our hubert_local (every argument passed through unchanged)",
        description="fedhubert downstream -m train -u hubert_local -k SAVE/server/best_global_model.pt "
        "-d speech_commands ...",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedhubert", description="Federated HuBERT pretraining with fairseq, Flower and s3prl."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, and the traceback of every error")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_toy_data_parser(subparsers)
    add_prepare_parser(subparsers)
    add_pretrain_parser(subparsers)
    add_distill_parser(subparsers)
    add_label_quality_parser(subparsers)
    add_probe_parser(subparsers)
    add_export_parser(subparsers)
    add_downstream_parser(subparsers)
    add_demo_parser(subparsers)
    return parser


def split_global_options(argv: List[str]) -> Optional[int]:
    """The position of ``downstream`` when it is the command (after global options only), else None."""
    for index, arg in enumerate(argv):
        if arg == "downstream":
            return index
        if not arg.startswith("-"):
            return None
    return None


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``fedhubert`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    downstream = split_global_options(argv)
    if downstream is not None:  # s3prl's own command line follows: hand it over untouched
        args = build_parser().parse_args(argv[:downstream] + ["downstream"])
        args.run = lambda _: run_downstream_command(argv[downstream + 1 :])
    else:
        args = build_parser().parse_args(argv)
    console.configure(args.verbose)
    try:
        args.run(args)
    except USER_ERRORS as err:
        if args.verbose:
            logger.exception("%s", err)
        else:
            logger.error("%s (run with -v for the traceback)", err)
        return 1
    return 0


def run_downstream_command(argv: List[str]) -> None:
    from fedhubert_plugin.downstream import run_downstream

    run_downstream(argv)


if __name__ == "__main__":
    sys.exit(main())
