"""The ``fedhubert`` command line: every command's options come from dataclasses (``COMMANDS``) through ``options``.

A command builds its dataclass from the parsed arguments and calls the library function that does the job. Building
the parser imports only fairseq and those declarations; every heavy import (Flower, Ray, s3prl, scikit-learn) happens
inside the command that needs it, so ``fedhubert --help`` stays fast."""

import argparse
import logging
import sys
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from fedhubert_plugin import configs, console
from fedhubert_plugin.downstream import run_downstream
from fedhubert_plugin.export import ExportConfig
from fedhubert_plugin.federation.settings import FederationSettings
from fedhubert_plugin.options import add_options, from_args, option_values
from fedhubert_plugin.superb import SuperbConfig
from fedhubert_plugin.targets import LabelQualityConfig

logger = logging.getLogger("fedhubert")
# errors a user can fix from the message alone: printed without a traceback unless -v
USER_ERRORS = (FileExistsError, FileNotFoundError, ValueError, RuntimeError)


def run_toy_data(args: argparse.Namespace) -> None:
    from fedhubert_plugin.toy_superb import write_toy_corpora

    print(write_toy_corpora(from_args(configs.ToyDataConfig, args)))


def run_prepare(args: argparse.Namespace) -> None:
    from fedhubert_plugin.prepare import prepare, summary_table

    print(summary_table(prepare(from_args(configs.PrepareConfig, args))))


def run_federation(args: argparse.Namespace, **values: Any) -> None:
    """Simulate the federation of ``args`` on the clients prepared in ``--data-root``; ``values`` set other fields."""
    from fedhubert_plugin.federation.simulation import simulate_pretraining
    from fedhubert_plugin.recipes import find_recipe

    values = {**option_values(FederationSettings, args), "recipe": str(find_recipe(args.recipe)), **values}
    settings = configs.from_prepared_data(**values)
    simulate_pretraining(settings, num_clients=settings.min_available_nodes)
    print(f"checkpoints in {settings.server_dir}; metrics in {settings.server_dir / 'metrics.jsonl'}")


def federation_with(config: type) -> Callable[[argparse.Namespace], None]:
    """``run_federation`` with the settings that the command's own options (``config``: distill, finetune) set."""
    return lambda args: run_federation(args, **from_args(config, args).settings(args.overrides))


def run_label_quality(args: argparse.Namespace) -> None:
    from fedhubert_plugin.targets.quality import quality_table, score_labels

    print(quality_table(score_labels(from_args(LabelQualityConfig, args))))


def run_probe(args: argparse.Namespace) -> None:
    from fedhubert_plugin.probe import probe_checkpoints, probe_table

    results, written = probe_checkpoints(from_args(configs.ProbeConfig, args))
    print(probe_table(results))
    print(f"every layer: {written['json']}; plot: {written['png']}")


def run_asr_eval(args: argparse.Namespace) -> None:
    from fedhubert_plugin.asr_eval import evaluate_wer, wer_line

    print(wer_line(evaluate_wer(from_args(configs.AsrEvalConfig, args))))


def run_export(args: argparse.Namespace) -> None:
    from fedhubert_plugin.export import export, how_to_load

    out = export(from_args(ExportConfig, args))
    print(f"wrote {out} ({how_to_load(out)})")


def run_superb_command(args: argparse.Namespace) -> None:
    from fedhubert_plugin.superb import run_superb

    print(run_superb(from_args(SuperbConfig, args)))


def run_demo_command(args: argparse.Namespace) -> None:
    from fedhubert_plugin.demo import run_demo

    run_demo(from_args(configs.DemoConfig, args))


class Command(NamedTuple):
    """A subcommand: what runs it, the dataclasses its options come from (with other defaults), its help."""

    run: Callable[[argparse.Namespace], None]
    configs: Tuple[type, ...]
    help: str
    description: str
    defaults: Dict[str, Any] = {}


COMMANDS = {
    "toy-data": Command(
        run_toy_data,
        (configs.ToyDataConfig,),
        "synthesize a LibriSpeech-layout corpus and a Speech-Commands-layout keyword set with espeak-ng",
        "Write DIR/LibriSpeech/{train-clean-5,dev-clean-2} and DIR/speech_commands/{train,test}.",
    ),
    "prepare": Command(
        run_prepare,
        (configs.PrepareConfig,),
        "partition a LibriSpeech tree into clients with fairseq manifests and k-means labels "
        "(MFCC or a checkpoint's layer)",
        "Scan LibriSpeech subsets, split them across clients (non-IID by speaker by default), "
        "write fairseq manifests and k-means targets per client under OUT/clients/client_XXX.",
    ),
    "pretrain": Command(
        run_federation,
        (FederationSettings,),
        "federated HuBERT pretraining of the prepared clients (Flower simulation, fairseq trainers)",
        "Each round every client trains the global model with fairseq's Trainer on its own shard; "
        "the server aggregates (FedAvg by default) and checkpoints SAVE/server/. Trailing KEY=VALUE "
        "arguments are fairseq/hydra overrides of the recipe (e.g. model.encoder_layers=4).",
    ),
    "distill": Command(
        federation_with(configs.DistillConfig),
        (configs.DistillConfig, FederationSettings),
        "federated knowledge distillation of a frozen teacher into a smaller student",
        "Same federation as pretrain; each client trains the student with the criterion "
        "hubert_distillation (KD from the teacher + HuBERT loss on its own k-means targets, + layer "
        "regression). The teacher is read from --teacher on each client and never sent.",
        configs.DISTILL_DEFAULTS,
    ),
    "finetune": Command(
        federation_with(configs.FinetuneConfig),
        (configs.FinetuneConfig, FederationSettings),
        "federated CTC fine-tuning of a pretrained HuBERT on the clients' transcribed speech (fairseq's hubert_ctc)",
        "Same federation as pretrain, on each client's finetune/ folder (letters from its transcripts, which never "
        "leave it); fairseq's hubert_ctc model and ctc criterion with the encoder frozen for the recipe's share of "
        "the updates. The best round by the clients' pooled validation WER is SAVE/server/checkpoint_best.pt.",
        configs.FINETUNE_DEFAULTS,
    ),
    "label-quality": Command(
        run_label_quality,
        (LabelQualityConfig,),
        "score k-means labels against phone alignments: phone purity, cluster purity, PNMI (fairseq's measures)",
        "Scores every client's labels of a `fedhubert prepare` folder (--data-root), or any fairseq "
        "manifest and label file (--labels, repeatable), against frame-level phone alignments in the format of "
        "fairseq's examples/hubert/measure_teacher_quality.py (`fedhubert toy-data` writes them to OUT/alignments), "
        "or against Montreal Forced Aligner TextGrids.",
    ),
    "probe": Command(
        run_probe,
        (configs.ProbeConfig,),
        "what each layer of a checkpoint knows about phones: linear phone accuracy and k-means PNMI",
        "For every layer of each checkpoint (s3prl's hidden_states of hubert_local) and for MFCC: a "
        "frame-level linear phone classifier fitted on --train-subset's speakers and scored on --test-subset's, "
        "and PNMI of k-means (100 clusters) on the same frames. Prints and writes each model's best layer and its "
        "best transformer layer (layer 0 is the encoder's input, the conv front end; 1 and up come after transformer "
        "layers). Writes OUT/probe.{json,md,png}.",
    ),
    "export": Command(
        run_export,
        (ExportConfig,),
        "write a checkpoint in s3prl's converted HuBERT format (for stock s3prl), or a SUPERB upstream folder",
        "--checkpoint converts a fairseq-format checkpoint (SAVE/server/checkpoint_best.pt, "
        "fairseq-hydra-train's) or an s3prl one; --initial writes the untrained model of a recipe (the "
        "weights federated round 1 starts from), the random-init baseline for downstream comparisons. "
        "--out FILE writes one .pt; --superb DIR writes the SUPERB hidden-set upstream folder (expert.py, "
        "hubconf.py, model.pt) that loads with torch and s3prl alone.",
    ),
    "asr-eval": Command(
        run_asr_eval,
        (configs.AsrEvalConfig,),
        "word error rate of a CTC fine-tuned checkpoint on a finetune/ folder (fairseq's Viterbi or KenLM decoder)",
        "Decodes --subset of --data and writes OUT/hypo.word, OUT/ref.word and OUT/wer.json.",
    ),
    "superb": Command(
        run_superb_command,
        (SuperbConfig,),
        "SUPERB tasks (KS, IC, SID, ASR) on one or more checkpoints, one table beside HuBERT Base's published figures",
        "Each task on each frozen checkpoint in OUT/<task>/<name> (a pair done is read back: a rerun resumes), then "
        "OUT/superb.{json,md}. --toy: a `fedhubert toy-data --superb` folder and the *_tiny configs.",
    ),
    "demo": Command(
        run_demo_command,
        (configs.DemoConfig,),
        "the whole pipeline in one command: data, prepare, pretrain, distill, KS downstream, report",
        "Toy corpus (or your LibriSpeech and Speech Commands) -> 4 speaker non-IID clients with federated "
        "k-means -> federated HuBERT pretraining -> federated distillation -> s3prl keyword spotting for teacher, "
        "student and random init -> OUT/report.md with plots. A rerun reuses finished phases.",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; each has ``run``, the function that runs it, as a default."""
    parser = argparse.ArgumentParser(
        prog="fedhubert", description="Federated HuBERT pretraining with fairseq, Flower and s3prl."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, and the traceback of every error")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        p = subparsers.add_parser(name, help=command.help, description=command.description)
        for config in command.configs:
            add_options(p, config, **command.defaults)
        p.set_defaults(run=command.run)
    subparsers.add_parser(  # main hands everything after `downstream` to s3prl
        "downstream",
        add_help=False,
        help="s3prl's run_downstream with our hubert_local (every argument passed through unchanged)",
        description="fedhubert downstream -m train -u hubert_local -k SAVE/server/best_global_model.pt "
        "-d speech_commands ...",
    )
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
        args.run = lambda _: run_downstream(argv[downstream + 1 :])
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


if __name__ == "__main__":
    sys.exit(main())
