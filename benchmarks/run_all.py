"""Every benchmark on this machine, in one command: each writes ``benchmarks/results/<name>.{json,md}``, and
``benchmarks/results.md`` gathers them.

Each figure is a ratio of two things measured side by side in one run, on the toy corpus, and
every results file opens with where it comes from: date, machine, commit and command
(``common.provenance``). ``--sections`` reruns some; the others keep their own files, dates and
commits, so a reader sees which figures are older.

1. overhead: K local updates of the tiny recipe under plain `fairseq-hydra-train` against one
   federated round with one client (`fedhubert pretrain`, the same shard), with the server's
   and the client's breakdown, and rounds 2+ against round 1; 5. memory: peak RSS of that
   client against plain fairseq;
2. communication: bytes per client per round against 4 x parameters, and float16 transport
   against float32 (bytes, and validation loss after the same rounds);
3. data preparation against fairseq's simple_kmeans scripts at 0.5, 2 and 8 h of audio
   (benchmarks/prepare_vs_fairseq.py);
4. quality (benchmarks/quality.py): centralized against federated runs and random init, 3 seeds; 4b and 4c
   FedAdam's settings (quality.py --sweep at 240 updates, fedadam_sweep.py at 1,600 over seeds);
6. GPU: 1 and 5 with the Base recipe in fp16, and a round of two, then four, clients sharing the GPU,
   when there is an NVIDIA GPU (`--sections gpu`; 11b, activation_memory_gpu, too);
7.-17. benchmarks/distill_student.py, checkpoint_features.py, deployment.py, server_memory.py,
   activation_memory.py, faults_privacy.py, demo.py, superb.py, learning_curve.py, finetune.py and
   broken_runs.py, each a script of its own (quality --sweep, fedadam_sweep, learning_curve and finetune, an hour or
   more, only when named).

    .venv/bin/python benchmarks/run_all.py [--rounds 5] [--local-updates 10] [--sections overhead quality ...]
"""

import argparse
import sys
from pathlib import Path
from typing import Dict, List

import torch
from common import REPO, RESULTS, fairseq_train, federated, prepare, run, write_results

from fedhubert_plugin.checkpoints import load_checkpoint
from fedhubert_plugin.federation.server.runlog import validations
from fedhubert_plugin.toy_data import write_toy_data

RESULTS_MD = REPO / "benchmarks" / "results.md"
# every section: its results file's name and its title in results.md, in order
SECTIONS = {
    "overhead": "1. Federation overhead (target ≤ 1.10) and 5. memory (target ≤ 1.10)",
    "communication": "2. Communication",
    "prepare_vs_fairseq": "3. Data preparation against fairseq simple_kmeans, 0.5 to 8 h",
    "quality": "4. Quality: federated against centralized, over seeds",
    "quality_sweep": "4b. FedAdam's server lr, tau and local updates (quality.py --sweep)",
    "fedadam_sweep": "4c. FedAdam's server lr, tau and local updates again at 1,600 updates, over seeds; FedAvg "
    "against centralized with as many sequential updates and batches",
    "gpu": "6. GPU (Base recipe, fp16)",
    "distill_student": "7. Teacher against distilled student",
    "checkpoint_features": "8. Iteration-2 feature extraction",
    "deployment": "9. Deployment rounds against simulation rounds",
    "server_memory": "10. Server memory against clients per round, Base's and Large's tensors",
    "activation_memory": "11. Base's training memory against max_tokens, activation checkpointing",
    "activation_memory_gpu": "11b. The same on the GPU: the CPU estimate checked",
    "faults_privacy": "12. Robust aggregation, differential privacy, secure aggregation",
    "demo": "13. The demo (`fedhubert demo`)",
    "superb": "14. SUPERB on the toy corpora (`fedhubert superb`)",
    "learning_curve": "15. Learning curves: centralized against federated, 3,200 updates, over seeds",
    "finetune": "16. CTC fine-tuning: federated against centralized, pretrained against random init, over seeds",
    "broken_runs": "17. Broken runs beside the reference curves: another codebook, a server lr 100 times too high",
}
# sections too long for a default run (hours on 2 cores): run by name
LONG_SECTIONS = {"quality_sweep", "fedadam_sweep", "learning_curve", "finetune"}
# sections that need an NVIDIA GPU (skipped, with a line saying so, on a machine without one)
GPU_SECTIONS = {"gpu", "activation_memory_gpu"}
# sections that are a script of their own (benchmarks/<name>.py unless SCRIPT_OF names another), with the arguments
# run_all gives it; {work} and {toy} are run_all's work folder and the toy corpus it wrote there
OWN_SCRIPTS = {
    "prepare_vs_fairseq": ["--hours", "0.5", "2", "8"],
    "quality": [],
    "quality_sweep": ["--sweep"],
    "fedadam_sweep": [],
    "distill_student": [],
    "checkpoint_features": ["--toy", "{toy}"],
    "deployment": [],
    "server_memory": [],
    "activation_memory": ["--work", "{work}/activation_memory"],  # one toy shard for the CPU and the GPU runs
    "activation_memory_gpu": ["--device", "cuda", "--work", "{work}/activation_memory"],
    "faults_privacy": [],
    "demo": [],
    "superb": [],
    "learning_curve": [],
    "finetune": [],
    "broken_runs": [],
}
SCRIPT_OF = {"quality_sweep": "quality", "activation_memory_gpu": "activation_memory"}


def overhead_and_memory(
    work: Path, toy: Path, updates: int, recipe: str = "tiny", overrides: List[str] = (), extra: List[str] = ()
) -> Dict:
    """1 and 5: the same shard and K updates, plain fairseq against one federated round with one client
    (``extra``: more `fedhubert pretrain` flags)."""
    one = prepare(toy, work / "one_client", 1)
    shard = one / "clients" / "client_000"
    plain = fairseq_train(shard, work / f"plain_{recipe}", updates, recipe, list(overrides))
    single = federated(one, work / f"fed_one_round_{recipe}", 1, updates, recipe, extra, overrides)
    steady = federated(one, work / f"fed_three_rounds_{recipe}", 3, updates, recipe, extra, overrides)
    first = single["rounds"][0]
    client = first["clients"]["client_000"]
    later = [line["round_seconds"] for line in steady["rounds"][1:]]
    return {
        "updates": updates,
        "plain_fairseq_seconds": plain["wall_seconds"],
        "federated_one_round_seconds": single["wall_seconds"],
        "overhead_ratio": single["wall_seconds"] / plain["wall_seconds"],
        "breakdown_seconds": {
            "process_start_and_flower_ray": single["wall_seconds"] - first["round_seconds"],
            "client_process_start_and_messaging": first["server_seconds"]["clients_train"]
            - client["train_seconds"]
            - client["train_setup_seconds"]
            - client["train_serialize_seconds"]
            - client["train_validation_seconds"],
            "client_setup_model_dataset_trainer": client["train_setup_seconds"],
            "client_validation_of_the_received_model": client["train_validation_seconds"],
            "client_training": client["train_seconds"],
            "serialization": client["train_serialize_seconds"] + first["server_seconds"]["serialize"],
            "final_evaluation_message": first["server_seconds"]["clients_evaluate"],
            "checkpointing": first["server_seconds"]["checkpoint"],
        },
        "round1_seconds": steady["rounds"][0]["round_seconds"],
        "rounds2plus_mean_seconds": sum(later) / len(later),
        "rounds2plus_over_round1": (sum(later) / len(later)) / steady["rounds"][0]["round_seconds"],
        "plain_fairseq_peak_rss_mb": plain["peak_rss_mb"],
        "client_peak_rss_mb": client["train_peak_rss_mb"],
        "memory_ratio": client["train_peak_rss_mb"] / plain["peak_rss_mb"],
        "plain_fairseq_peak_gpu_mb": plain["peak_gpu_mb"],
        "client_peak_gpu_mb": client.get("train_peak_gpu_mb", 0.0),
        "plain_fairseq_samples_per_second": plain["samples_per_second"],
        "client_samples_per_second": client["train_samples_per_second"],
    }


def shared_gpu(work: Path, toy: Path, clients: int, updates: int, recipe: str, overrides: List[str]) -> Dict:
    """One round of ``clients`` clients on one GPU, ``1 / clients`` of it each: round seconds, each client's peak
    GPU memory and samples per second."""
    data = prepare(toy, work / f"{clients}_clients", clients)
    extra = ["--gpus-per-client", str(1 / clients)]
    save = work / f"shared_gpu_{clients}_{recipe}"
    shared = federated(data, save, 1, updates, recipe, extra=extra, overrides=overrides)
    trained = shared["rounds"][0]["clients"]
    return {
        "clients": clients,
        "gpus_per_client": 1 / clients,
        "round_seconds": shared["rounds"][0]["round_seconds"],
        "client_peak_gpu_mb": {name: c.get("train_peak_gpu_mb", 0.0) for name, c in trained.items()},
        "client_samples_per_second": {name: c["train_samples_per_second"] for name, c in trained.items()},
    }


def gpu(work: Path, toy: Path, updates: int, recipe: str, overrides: List[str]) -> Dict:
    """6: 1 and 5 with ``recipe`` on the GPU (GPU memory, samples per second too), and one round of two, then four,
    clients sharing it. On a CPU, ``run_all.gpu(..., "tiny", ["common.cpu=true"])`` runs the same steps."""
    one = overhead_and_memory(work, toy, updates, recipe, overrides, ["--gpus-per-client", "1"])
    return {
        **one,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "gpu_memory_ratio": one["client_peak_gpu_mb"] / one["plain_fairseq_peak_gpu_mb"]
        if one["plain_fairseq_peak_gpu_mb"]
        else float("nan"),
        "samples_per_second_ratio": one["client_samples_per_second"] / one["plain_fairseq_samples_per_second"],
        "shared_gpu": [shared_gpu(work, toy, clients, updates, recipe, overrides) for clients in (2, 4)],
    }


def gpu_markdown(g: Dict) -> List[str]:
    """Section 6's table."""
    return [
        f"{g['device']}, {g['updates']} updates of the Base recipe in fp16.",
        "",
        "| measure | plain fairseq-hydra-train | one federated round, one client | ratio (target) |",
        "| --- | --- | --- | --- |",
        row(
            "wall",
            f"{g['plain_fairseq_seconds']:.1f} s",
            f"{g['federated_one_round_seconds']:.1f} s",
            f"{g['overhead_ratio']:.2f} (≤ 1.05 at 200 updates)",
        ),
        row(
            "peak GPU memory allocated",
            f"{g['plain_fairseq_peak_gpu_mb']:.0f} MB",
            f"{g['client_peak_gpu_mb']:.0f} MB",
            f"{g['gpu_memory_ratio']:.2f} (≤ 1.05)",
        ),
        row(
            "samples per second",
            f"{g['plain_fairseq_samples_per_second']:.1f}",
            f"{g['client_samples_per_second']:.1f}",
            f"{g['samples_per_second_ratio']:.2f} (≥ 0.95)",
        ),
    ] + [
        row(
            f"{s['clients']} clients sharing the GPU ({s['gpus_per_client']:g} each), one round",
            "",
            f"{s['round_seconds']:.1f} s; per client: peak GPU "
            + ", ".join(f"{v:.0f}" for v in s["client_peak_gpu_mb"].values())
            + " MB; samples/s "
            + ", ".join(f"{v:.1f}" for v in s["client_samples_per_second"].values()),
            "",
        )
        for s in g["shared_gpu"]
    ]


def communication(work: Path, toy: Path, rounds: int, updates: int) -> Dict:
    """2: bytes on the wire, float32 against float16 transport."""
    data = prepare(toy, work / "four_clients", 4)
    fp32 = federated(data, work / "fed_fp32", rounds, updates)
    fp16 = federated(data, work / "fed_fp16", rounds, updates, extra=["--transport-dtype", "float16"])
    params = sum(v.numel() for v in load_checkpoint(fp32["checkpoint"])["model"].values())
    clients = len(fp32["rounds"][0]["participants"])
    per_client = [line["bytes_received"] / clients for line in fp32["rounds"]]
    per_client_fp16 = [line["bytes_received"] / clients for line in fp16["rounds"]]
    # downlink: rounds before the last carry the model once; the last adds the final evaluation's download
    sent = [line["bytes_sent"] / clients for line in fp32["rounds"]]
    final_fp32, final_fp16 = (list(validations(run["rounds"]).values())[-1]["metrics"]["loss"] for run in (fp32, fp16))
    return {
        "parameters": params,
        "bytes_per_client_round_float32": sum(per_client) / len(per_client),
        "ratio_to_4x_parameters": (sum(per_client) / len(per_client)) / (4 * params),
        "sent_per_client_round_float32": sum(sent[:-1]) / len(sent[:-1]),
        "sent_ratio_to_model": (sum(sent[:-1]) / len(sent[:-1])) / (4 * params),
        "sent_last_round_ratio_to_model": sent[-1] / (4 * params),
        "bytes_per_client_round_float16": sum(per_client_fp16) / len(per_client_fp16),
        "float16_bytes_ratio": sum(per_client_fp16) / sum(per_client),
        "valid_loss_float32": final_fp32,
        "valid_loss_float16": final_fp16,
        "float16_valid_loss_ratio": final_fp16 / final_fp32,
    }


def row(*cells: str) -> str:
    """A markdown table row."""
    return "| " + " | ".join(cells) + " |"


def overhead_table(o: Dict) -> List[str]:
    """Sections 1 and 5: plain fairseq against one federated round, and the round's breakdown."""
    lines = [
        "| measure | plain fairseq-hydra-train | one federated round, one client | ratio |",
        "| --- | --- | --- | --- |",
        row(
            f"wall, {o['updates']} updates (process start to end)",
            f"{o['plain_fairseq_seconds']:.1f} s",
            f"{o['federated_one_round_seconds']:.1f} s",
            f"{o['overhead_ratio']:.2f}",
        ),
        row(
            "peak RSS of the training process",
            f"{o['plain_fairseq_peak_rss_mb']:.0f} MB",
            f"{o['client_peak_rss_mb']:.0f} MB",
            f"{o['memory_ratio']:.2f}",
        ),
        row(
            "rounds 2+ against round 1 (3-round run)",
            "",
            f"{o['round1_seconds']:.1f} s → {o['rounds2plus_mean_seconds']:.1f} s",
            f"{o['rounds2plus_over_round1']:.2f}",
        ),
        "",
        "Breakdown of the federated round (seconds):",
        "",
        "| part | seconds |",
        "| --- | --- |",
    ]
    return lines + [f"| {k.replace('_', ' ')} | {v:.2f} |" for k, v in o["breakdown_seconds"].items()]


def communication_table(c: Dict) -> List[str]:
    """Section 2: bytes on the wire, float32 against float16."""
    return [
        "| measure | value | ratio |",
        "| --- | --- | --- |",
        row(
            "bytes per client per round, float32",
            f"{c['bytes_per_client_round_float32'] / 1e6:.2f} MB",
            f"{c['ratio_to_4x_parameters']:.3f} of 4 × {c['parameters']} parameters",
        ),
        row(
            "bytes sent to each client per round (rounds before the last), float32",
            f"{c['sent_per_client_round_float32'] / 1e6:.2f} MB",
            f"{c['sent_ratio_to_model']:.3f} of the model (target ≤ 1.02); last round with the final "
            f"evaluation {c['sent_last_round_ratio_to_model']:.2f}",
        ),
        row(
            "bytes per client per round, float16 transport",
            f"{c['bytes_per_client_round_float16'] / 1e6:.2f} MB",
            f"{c['float16_bytes_ratio']:.3f} of float32 (target ≤ 0.5)",
        ),
        row(
            "validation loss of the final model, float16 against float32",
            f"{c['valid_loss_float16']:.4f} vs {c['valid_loss_float32']:.4f}",
            f"{c['float16_valid_loss_ratio']:.4f} (target within 1 %)",
        ),
    ]


def gather() -> str:
    """results.md: every section's results file under its title, or a line saying it has not run."""
    lines = [
        "# fedhubert benchmarks",
        "",
        "Gathered from `benchmarks/results/<section>.md` by `benchmarks/run_all.py`. Each section says when, where, "
        "from which commit and with which command it ran; sections run at different times. Toy corpus, tiny recipe "
        "unless named.",
        "",
    ]
    for name, title in SECTIONS.items():
        path = RESULTS / f"{name}.md"
        body = (
            path.read_text().strip()
            if path.is_file()
            else f"Not run yet: `python benchmarks/run_all.py --sections {name}`."
        )
        lines += [f"## {title}", "", body, ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-updates", type=int, default=10)
    parser.add_argument("--work", type=Path, default=Path("/tmp/fedhubert-benchmarks"))
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=list(SECTIONS),
        default=[name for name in SECTIONS if name not in LONG_SECTIONS],
        help="run only these; the others keep their results files, e.g. --sections gpu",
    )
    parser.add_argument("--gather", action="store_true", help="only rewrite results.md from the results files")
    args = parser.parse_args()
    if args.gather:
        args.sections = []
    args.work.mkdir(parents=True, exist_ok=True)
    toy = args.work / "toy"
    if args.sections and not (toy / "toy_data.json").is_file():
        write_toy_data(toy, force=True)
    note = "Toy corpus, tiny recipe, one client on all cores."
    for name in args.sections:
        if name == "overhead":
            o = overhead_and_memory(args.work, toy, args.local_updates, overrides=["common.cpu=true"])
            write_results("overhead", [o], overhead_table(o), note)
        elif name == "communication":
            c = communication(args.work, toy, args.rounds, args.local_updates)
            write_results("communication", [c], communication_table(c), f"Toy corpus, 4 clients, {args.rounds} rounds.")
        elif name in GPU_SECTIONS and not torch.cuda.is_available():
            print(f"{name}: not run, no NVIDIA GPU on this machine; results/{name}.md is left as it is", flush=True)
        elif name == "gpu":
            # no DataLoader workers, plain and federated alike: with the recipe's 6, GPU rounds hung in 3 of 4
            # tries (results/gpu.md; docs/troubleshooting.md)
            g = gpu(args.work / "gpu", toy, args.local_updates, "base", ["common.fp16=true", "dataset.num_workers=0"])
            write_results("gpu", [g], gpu_markdown(g), "Base recipe in fp16 on the GPU.")
        else:
            script = REPO / "benchmarks" / f"{SCRIPT_OF.get(name, name)}.py"
            extra = [arg.format(work=args.work, toy=toy) for arg in OWN_SCRIPTS[name]]
            run([sys.executable, str(script), *extra], args.work / f"{name}.log")
        RESULTS_MD.write_text(gather())  # after every section: a failure keeps what was measured
    RESULTS_MD.write_text(gather())
    print(RESULTS_MD.read_text())


if __name__ == "__main__":
    main()
