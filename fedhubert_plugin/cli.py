"""The ``fedhubert`` command line."""
import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional

logger = logging.getLogger("fedhubert")


def add_toy_data_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "toy-data",
        help="synthesize a LibriSpeech-layout corpus and a Speech-Commands-layout keyword set with espeak-ng",
        description="Write DIR/LibriSpeech/{train-clean-5,dev-clean-2} and DIR/speech_commands/{train,test}.",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (must be empty unless --force)")
    p.add_argument("--speakers", type=int, default=8, help="speakers in the train subset (default 8)")
    p.add_argument("--dev-speakers", type=int, default=2, help="speakers in the dev subset (default 2)")
    p.add_argument("--utterances", type=int, default=6, help="utterances per speaker (default 6)")
    p.add_argument("--keyword-speakers", type=int, default=6, help="speakers of the keyword train set (default 6)")
    p.add_argument("--keyword-repeats", type=int, default=2, help="times each keyword speaker says each word (default 2)")
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
        keyword_speakers=args.keyword_speakers,
        keyword_repeats=args.keyword_repeats,
        seed=args.seed,
        workers=args.workers,
        force=args.force,
    )
    print(f"LibriSpeech root:     {summary.librispeech_root} ({summary.train_utterances} train, {summary.dev_utterances} dev utterances)")
    print(f"Speech Commands root: {summary.speech_commands_root} ({summary.keyword_train_files} files)")
    print(f"Speech Commands test: {summary.speech_commands_test_root} ({summary.keyword_test_files} files)")


def add_prepare_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="partition a LibriSpeech tree into clients with fairseq manifests and k-means labels (MFCC or a checkpoint's layer)",
        description="Scan LibriSpeech subsets, split them across clients (non-IID by speaker by default), "
        "write fairseq manifests and k-means targets per client under OUT/clients/client_XXX.",
    )
    p.add_argument("--librispeech-root", type=Path, required=True, help="folder holding the subsets (e.g. .../LibriSpeech)")
    p.add_argument("--subsets", nargs="+", required=True, help="e.g. train-clean-100 train-clean-360")
    p.add_argument("--num-clients", type=int, required=True)
    p.add_argument("--out", type=Path, required=True, help="prepared data folder")
    p.add_argument("--partition", choices=["speaker", "iid", "dirichlet"], default="speaker",
                   help="speaker: each speaker on one client (default); iid: utterance-level baseline; "
                   "dirichlet: speaker shares ~ Dirichlet(--alpha)")
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (default 0.5; small = more skewed)")
    p.add_argument("--features", choices=["hubert", "seed", "checkpoint"], default="hubert",
                   help="hubert: 39-dim MFCC+deltas at 100 Hz, iteration 1 (default); seed: 13-dim MFCC at 50 Hz; "
                   "checkpoint: layer --layer of --checkpoint at 50 Hz, iteration 2")
    p.add_argument("--checkpoint", type=Path, help="--features checkpoint: iteration 1's global model "
                   "(SAVE/server/checkpoint_best.pt or best_global_model.pt), read by each client from its disk")
    p.add_argument("--layer", type=int, default=0, help="--features checkpoint: encoder layer, 1-based (HuBERT Base: 6)")
    p.add_argument("--kmeans", choices=["federated", "local"], default="federated",
                   help="federated: one shared codebook via Flower, only sums and counts leave a client (default); "
                   "local: one codebook per client")
    p.add_argument("--n-clusters", type=int, default=100)
    p.add_argument("--valid-fraction", type=float, default=0.1)
    p.add_argument("--min-seconds", type=float, default=2.0,
                   help="skip shorter utterances (default 2.0 s, HuBERT Base's min_sample_size)")
    p.add_argument("--min-count", type=int, default=5,
                   help="federated k-means: a client withholds clusters with fewer frames than this (default 5)")
    p.add_argument("--kmeans-max-iter", type=int, default=10, help="federated k-means: Lloyd steps at most (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="parallel audio readers for the scan (default 2)")
    p.set_defaults(run=run_prepare)


def run_prepare(args: argparse.Namespace) -> None:
    from fedhubert_plugin.data.prepare import PrepareConfig, prepare, summary_table

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


def recipe_path(name: str, folder: str = "pretrain") -> Path:
    """A recipe yaml: a path, or the name of one in recipes/librispeech/<folder> (pretrain: tiny, base)."""
    from fedhubert_plugin.federation.recipe import APP_DIR

    recipes = APP_DIR / "recipes" / "librispeech" / folder
    path = Path(name)
    if path.is_file():
        return path.resolve()
    if (recipes / f"{name}.yaml").is_file():
        return recipes / f"{name}.yaml"
    raise FileNotFoundError(f"recipe {name} not found: give a yaml path or one of {sorted(p.stem for p in recipes.glob('*.yaml'))}")


def add_federation_options(p: argparse.ArgumentParser) -> None:
    """Options shared by every federated training command (pretrain, distill)."""
    from fedhubert_plugin.federation.strategies import STRATEGIES

    p.add_argument("--data", type=Path, required=True, help="folder made by `fedhubert prepare`")
    p.add_argument("--save-dir", type=Path, required=True)
    p.add_argument("--rounds", type=int, required=True)
    p.add_argument("--strategy", choices=STRATEGIES, default="fedadam",
                   help="Flower strategy (default fedadam); fedmedian, fedtrimmedavg, krum and multikrum resist a few bad clients")
    p.add_argument("--eta", type=float, default=1e-3, help="server learning rate (FedAdam/Yogi/Adagrad; default 1e-3)")
    p.add_argument("--eta-l", type=float, default=0.0, help="client peak learning rate sent to clients (default: the recipe's)")
    p.add_argument("--beta-1", type=float, default=0.9)
    p.add_argument("--beta-2", type=float, default=0.99)
    p.add_argument("--tau", type=float, default=1e-6, help="adaptivity (default 1e-6)")
    local = p.add_mutually_exclusive_group()
    local.add_argument("--local-updates", type=int, default=0, help="fairseq updates per client per round (default 10)")
    local.add_argument("--local-epochs", type=int, default=0, help="local epochs per round instead of updates")
    p.add_argument("--fraction-train", type=float, default=1.0, help="share of clients sampled each round")
    p.add_argument("--min-train-nodes", type=int, default=2, help="fewest usable client updates for a round (default 2)")
    p.add_argument("--transport-dtype", choices=["float32", "float16"], default="float32",
                   help="precision of the weights on the wire, both ways (float16 halves traffic; aggregation stays float32)")
    p.add_argument("--trimmed-beta", type=float, default=0.2, help="fedtrimmedavg: share cut at each end (default 0.2)")
    p.add_argument("--malicious-nodes", type=int, default=1, help="krum/multikrum: bad clients to tolerate (default 1)")
    p.add_argument("--max-update-norm", type=float, default=0.0,
                   help="clip each client update (client minus global weights, L2) to this norm; 0: off (default)")
    p.add_argument("--round-timeout", type=float, default=6 * 3600.0,
                   help="seconds to wait for clients per round; late ones are left out of the round (default 6 h)")
    p.add_argument("--dp-clipping-norm", type=float, default=0.0,
                   help="differential privacy: clients clip their updates to this L2 norm (Flower's fixedclipping_mod); 0: off")
    p.add_argument("--dp-noise-multiplier", type=float, default=0.0,
                   help="differential privacy: server noise std = multiplier * clipping norm / sampled clients")
    p.add_argument("--dp-target-delta", type=float, default=1e-5, help="delta at which the privacy spent is reported (default 1e-5)")
    p.add_argument("--secure-aggregation", action="store_true",
                   help="Flower's SecAgg+: the server learns only the average of the masked client updates (needs --strategy fedavg)")
    p.add_argument("--secagg-clipping-range", type=float, default=1.0,
                   help="SecAgg+: update values are clipped to +-this before quantisation (default 1.0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue after the last completed round in SAVE/server")
    p.add_argument("--cpus-per-client", type=float, default=1.0, help="Ray CPUs per virtual client (default 1)")
    p.add_argument("--gpus-per-client", type=float, default=0.0, help="Ray GPUs per virtual client (default 0)")
    p.add_argument("overrides", nargs="*", help="fairseq/hydra overrides, e.g. model.encoder_layers=4")


def run_federation(args: argparse.Namespace, recipe: Path, overrides: List[str], init_from: str = "") -> None:
    """Simulate the federation of ``args`` on the prepared clients with ``recipe``."""
    from fedhubert_plugin.federation.pretrain_app import prepared_settings, simulate_pretraining

    settings, num_clients = prepared_settings(
        args.data,
        save_dir=str(args.save_dir.resolve()),
        recipe=str(recipe),
        rounds=args.rounds,
        overrides=overrides,
        strategy=args.strategy,
        eta=args.eta,
        eta_l=args.eta_l,
        beta_1=args.beta_1,
        beta_2=args.beta_2,
        tau=args.tau,
        local_updates=args.local_updates or (0 if args.local_epochs else 10),
        local_epochs=args.local_epochs,
        fraction_train=args.fraction_train,
        min_train_nodes=args.min_train_nodes,
        seed=args.seed,
        resume=args.resume,
        transport_dtype=args.transport_dtype,
        init_from=init_from,
        timeout=args.round_timeout,
        max_update_norm=args.max_update_norm,
        trimmed_beta=args.trimmed_beta,
        malicious_nodes=args.malicious_nodes,
        dp_clipping_norm=args.dp_clipping_norm,
        dp_noise_multiplier=args.dp_noise_multiplier,
        dp_target_delta=args.dp_target_delta,
        secure_aggregation=args.secure_aggregation,
        secagg_clipping_range=args.secagg_clipping_range,
    )
    simulate_pretraining(settings, num_clients, args.cpus_per_client, args.gpus_per_client)
    print(f"checkpoints in {args.save_dir / 'server'}; metrics in {args.save_dir / 'server' / 'metrics.jsonl'}")


def add_pretrain_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pretrain",
        help="federated HuBERT pretraining of the prepared clients (Flower simulation, fairseq trainers)",
        description="Each round every client trains the global model with fairseq's Trainer on its own shard; "
        "the server aggregates (FedAdam by default) and checkpoints SAVE/server/. Trailing KEY=VALUE "
        "arguments are fairseq/hydra overrides of the recipe (e.g. model.encoder_layers=4).",
    )
    p.add_argument("--recipe", default="tiny", help="fairseq hydra yaml, or tiny / base / base_iter2 (default tiny)")
    p.add_argument("--init-from", type=Path, help="start from this checkpoint's fitting tensors (HuBERT iteration 2 "
                   "continued from iteration 1; default: from scratch, as HuBERT does)")
    add_federation_options(p)
    p.set_defaults(run=run_pretrain)


def run_pretrain(args: argparse.Namespace) -> None:
    if args.init_from and not args.init_from.is_file():
        raise FileNotFoundError(f"--init-from {args.init_from} not found")
    run_federation(args, recipe_path(args.recipe), args.overrides, str(args.init_from.resolve()) if args.init_from else "")


def add_distill_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "distill",
        help="federated knowledge distillation of a frozen teacher into a smaller student",
        description="Same federation as pretrain; each client trains the student with the criterion "
        "hubert_distillation (KD from the teacher + HuBERT loss on its own k-means targets, + layer "
        "regression). The teacher is read from --teacher on each client and never sent.",
    )
    p.add_argument("--teacher", type=Path, required=True, help="teacher checkpoint (SAVE/server/checkpoint_best.pt or best_global_model.pt)")
    p.add_argument("--recipe", default="student", help="fairseq hydra yaml, or student / tiny_student (default student)")
    p.add_argument("--alpha", type=float, help="KD weight (default: the recipe's, 0.5)")
    p.add_argument("--temperature", type=float, help="KD temperature (default: the recipe's, 2.0)")
    p.add_argument("--hidden-weight", type=float, help="layer regression weight, 0 turns it off (default: the recipe's)")
    p.add_argument("--init-from-teacher", action="store_true", help="start the student from the teacher's fitting tensors (mapped layers, conv extractor)")
    add_federation_options(p)
    p.set_defaults(run=run_distill)


def run_distill(args: argparse.Namespace) -> None:
    teacher = args.teacher.resolve()
    if not teacher.is_file():
        raise FileNotFoundError(f"teacher {teacher} not found: pass SAVE/server/checkpoint_best.pt of a `fedhubert pretrain` run")
    overrides = [f"criterion.teacher_checkpoint={teacher}"]
    for key, value in (("alpha", args.alpha), ("temperature", args.temperature), ("hidden_weight", args.hidden_weight)):
        if value is not None:
            overrides.append(f"criterion.{key}={value}")
    run_federation(args, recipe_path(args.recipe, "distill"), overrides + args.overrides, str(teacher) if args.init_from_teacher else "")


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
    source.add_argument("--initial", metavar="RECIPE", help="recipe (yaml path, or tiny / base) whose initial model to write")
    p.add_argument("--out", type=Path, required=True, help="output .pt file")
    p.add_argument("--n-clusters", type=int, default=100, help="with --initial: k-means clusters of the targets (default 100)")
    p.add_argument("--label-rate", type=float, default=100, help="with --initial: label rate in Hz (default 100)")
    p.add_argument("overrides", nargs="*", help="with --initial: fairseq/hydra overrides of the recipe")
    p.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> None:
    from fedhubert_plugin.export import export_initial, export_s3prl

    if args.checkpoint:
        out = export_s3prl(args.checkpoint, args.out)
    else:
        out = export_initial(recipe_path(args.initial), args.out, args.n_clusters, args.label_rate, args.overrides)
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
    p.add_argument("--speech-commands-root", type=Path, help="Speech Commands v0.01 train folder, or a folder with train/ and test/")
    p.add_argument("--speech-commands-test-root", type=Path, help="Speech Commands test set folder")
    p.add_argument("--recipe", choices=["tiny", "base"], default="tiny", help="teacher recipe; base pairs with student.yaml and ks.yaml")
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

    run_demo(DemoConfig(out=args.out, librispeech_root=args.librispeech_root, subsets=args.subsets,
                        speech_commands_root=args.speech_commands_root, speech_commands_test_root=args.speech_commands_test_root,
                        recipe=args.recipe, num_clients=args.num_clients, n_clusters=args.n_clusters, rounds=args.rounds,
                        distill_rounds=args.distill_rounds, local_updates=args.local_updates, overrides=args.overrides, seed=args.seed))


def add_downstream_parser(subparsers: argparse._SubParsersAction) -> None:
    subparsers.add_parser(
        "downstream",
        add_help=False,
        help="s3prl's run_downstream with our hubert_local (every argument passed through unchanged)",
        description="fedhubert downstream -m train -u hubert_local -k SAVE/server/best_global_model.pt -d speech_commands ...",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedhubert", description="Federated HuBERT pretraining with fairseq, Flower and s3prl.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_toy_data_parser(subparsers)
    add_prepare_parser(subparsers)
    add_pretrain_parser(subparsers)
    add_distill_parser(subparsers)
    add_export_parser(subparsers)
    add_downstream_parser(subparsers)
    add_demo_parser(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``fedhubert`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["downstream"]:  # s3prl's own command line follows: hand it over untouched
        from fedhubert_plugin.downstream import run_downstream

        args = argparse.Namespace(verbose=False, run=lambda _: run_downstream(argv[1:]))
    else:
        args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
        force=True,
    )
    try:
        args.run(args)
    except (FileExistsError, FileNotFoundError, ValueError, RuntimeError) as err:
        logger.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
