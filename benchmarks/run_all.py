"""Every benchmark on this machine, in one command: benchmarks/results.md and benchmarks/results.json.

Each figure is a ratio of two things measured side by side in this run, on the toy corpus:

1. overhead: K local updates of the tiny recipe under plain `fairseq-hydra-train` against one
   federated round with one client (`fedhubert pretrain`, the same shard), with the server's
   and the client's breakdown, and rounds 2+ against round 1;
2. communication: bytes per client per round against 4 x parameters, and float16 transport
   against float32 (bytes, and validation loss after the same rounds);
3. data preparation against fairseq's simple_kmeans scripts (benchmarks/prepare_vs_fairseq.py);
4. quality: federated (4 clients, speaker non-IID, federated k-means) against centralized
   `fairseq-hydra-train` on the union of the clients' data with the same total updates (masked
   accuracy on the same validation set, KS accuracy), and federated against local k-means;
5. memory: peak RSS of a federated client against plain fairseq on the same recipe;
6. GPU: 1 and 5 with the Base recipe in fp16, when there is an NVIDIA GPU (`--sections gpu` runs just that);
7. and 8.: benchmarks/distill_student.py (teacher against student) and
   benchmarks/checkpoint_features.py (iteration-2 feature extraction).

    .venv/bin/python benchmarks/run_all.py [--rounds 5] [--local-updates 10] [--sections overhead quality ...]
"""

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import fairseq
import flwr
import s3prl
import torch
from common import RESULTS, machine_meta

from fedhubert_plugin.checkpoints import load_checkpoint
from fedhubert_plugin.downstream import keyword_spotting
from fedhubert_plugin.federation.local_trainer import LocalTrainer
from fedhubert_plugin.federation.runlog import read_metrics
from fedhubert_plugin.toy_data import DEV_SUBSET, TRAIN_SUBSET, write_toy_data

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RECIPES = REPO / "recipes" / "librispeech" / "pretrain"
RESULTS_JSON, RESULTS_MD = REPO / "benchmarks" / "results.json", REPO / "benchmarks" / "results.md"
SECTIONS = [
    "overhead",
    "quality",
    "prepare",
    "distill_student",
    "checkpoint_features",
    "gpu",
]  # quality includes communication
PEAK_RSS = (
    "import resource, runpy, sys; sys.argv = sys.argv[1:]\n"
    "try:\n"
    "    runpy.run_module('fairseq_cli.hydra_train', run_name='__main__')\n"
    "finally:\n"
    "    print('PEAK_RSS_MB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, flush=True)"
)


def run(cmd: List[str], log: Path, cwd: Path = REPO) -> float:
    """Run ``cmd`` (output to ``log``); its wall seconds. Fails with the log's tail."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed; see {log}:\n" + log.read_text()[-3000:])
    return time.perf_counter() - start


def fairseq_train(shard: Path, save: Path, updates: int, recipe: str = "tiny", extra: List[str] = ()) -> Dict:
    """Plain fairseq-hydra-train on one shard: wall seconds and peak RSS (MB)."""
    save.mkdir(parents=True, exist_ok=True)
    log = save / "train.log"
    wall = run(
        [
            sys.executable,
            "-c",
            PEAK_RSS,
            "fairseq-hydra-train",
            "--config-dir",
            str(RECIPES),
            "--config-name",
            recipe,
            f"task.data={shard}",
            f"task.label_dir={shard / 'labels'}",
            f"common.user_dir={REPO / 'fedhubert_plugin'}",
            f"optimization.max_update={updates}",
            f"checkpoint.save_dir={save / 'checkpoints'}",
            f"common.tensorboard_logdir={save / 'tb'}",
            f"hydra.run.dir={save}",
            *extra,
        ],
        log,
        cwd=save,
    )
    peak = float(next(line.split()[1] for line in log.read_text().splitlines() if line.startswith("PEAK_RSS_MB")))
    return {"wall_seconds": wall, "peak_rss_mb": peak, "checkpoint": str(save / "checkpoints" / "checkpoint_last.pt")}


def prepare(toy: Path, out: Path, clients: int, kmeans: str = "federated") -> Path:
    if not (out / "prepare.json").is_file():
        run(
            [
                str(BIN / "fedhubert"),
                "prepare",
                "--librispeech-root",
                str(toy / "LibriSpeech"),
                "--subsets",
                TRAIN_SUBSET,
                DEV_SUBSET,
                "--num-clients",
                str(clients),
                "--out",
                str(out),
                "--min-seconds",
                "1.0",
                "--kmeans",
                kmeans,
            ],
            out.parent / f"{out.name}.log",
        )
    return out


def federated(
    data: Path,
    save: Path,
    rounds: int,
    updates: int,
    recipe: str = "tiny",
    extra: List[str] = (),
    overrides: List[str] = (),
) -> Dict:
    """`fedhubert pretrain`: process wall seconds and its metrics.jsonl lines."""
    shutil.rmtree(save, ignore_errors=True)
    save.mkdir(parents=True)
    wall = run(
        [
            str(BIN / "fedhubert"),
            "pretrain",
            "--data-root",
            str(data),
            "--save-dir",
            str(save),
            "--recipe",
            recipe,
            "--num-server-rounds",
            str(rounds),
            "--local-updates",
            str(updates),
            "--min-train-nodes",
            "1",
            *extra,
            *overrides,
        ],
        save / "pretrain.log",
    )
    lines = read_metrics(save)
    return {"wall_seconds": wall, "rounds": lines, "checkpoint": str(save / "server" / "checkpoint_last.pt")}


def overhead_and_memory(work: Path, toy: Path, updates: int, recipe: str = "tiny", overrides: List[str] = ()) -> Dict:
    """1 and 5: the same shard and K updates, plain fairseq against one federated round with one client."""
    one = prepare(toy, work / "one_client", 1)
    shard = one / "clients" / "client_000"
    plain = fairseq_train(shard, work / f"plain_{recipe}", updates, recipe, list(overrides))
    single = federated(one, work / f"fed_one_round_{recipe}", 1, updates, recipe, overrides=overrides)
    steady = federated(one, work / f"fed_three_rounds_{recipe}", 3, updates, recipe, overrides=overrides)
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
            - client["train_serialize_seconds"],
            "client_setup_model_dataset_trainer": client["train_setup_seconds"],
            "client_training": client["train_seconds"],
            "serialization": client["train_serialize_seconds"] + first["server_seconds"]["serialize"],
            "aggregation": first["server_seconds"]["aggregate"],
            "federated_evaluation": first["server_seconds"]["clients_evaluate"],
            "checkpointing": first["server_seconds"]["checkpoint"],
        },
        "round1_seconds": steady["rounds"][0]["round_seconds"],
        "rounds2plus_mean_seconds": sum(later) / len(later),
        "rounds2plus_over_round1": (sum(later) / len(later)) / steady["rounds"][0]["round_seconds"],
        "plain_fairseq_peak_rss_mb": plain["peak_rss_mb"],
        "client_peak_rss_mb": client["train_peak_rss_mb"],
        "memory_ratio": client["train_peak_rss_mb"] / plain["peak_rss_mb"],
    }


def union_shard(data: Path, out: Path) -> Path:
    """The centralized baseline's data: every client's train and valid split in one shard (same labels)."""
    (out / "labels").mkdir(parents=True, exist_ok=True)
    clients = sorted((data / "clients").iterdir())
    for split in ("train", "valid"):
        manifests = [(c / f"{split}.tsv").read_text().splitlines() for c in clients]
        (out / f"{split}.tsv").write_text(
            "\n".join([manifests[0][0]] + [row for m in manifests for row in m[1:]]) + "\n"
        )
        (out / "labels" / f"{split}.km").write_text(
            "".join((c / "labels" / f"{split}.km").read_text() for c in clients)
        )
    for name in ("dict.km.txt", "labels.json"):
        shutil.copy(clients[0] / "labels" / name, out / "labels" / name)
    return out


def masked_accuracy(checkpoint: str, shard: Path) -> Dict[str, float]:
    """Validation of a checkpoint's weights on ``shard``'s valid split, by the same fairseq code for every model."""
    weights = {k: v.numpy() for k, v in load_checkpoint(checkpoint)["model"].items()}
    result = LocalTrainer(RECIPES / "tiny.yaml", ["common.cpu=true"], label_rate=100).evaluate(shard, weights)
    return {"valid_loss": result.metrics["loss"], "valid_acc_masked": result.metrics["acc_masked"]}


def communication_and_quality(work: Path, toy: Path, rounds: int, updates: int) -> Dict:
    """2 and 4: float32 and float16 federations, a centralized baseline, and local k-means."""
    data = prepare(toy, work / "four_clients", 4)
    fp32 = federated(data, work / "fed_fp32", rounds, updates)
    fp16 = federated(data, work / "fed_fp16", rounds, updates, extra=["--transport-dtype", "float16"])
    params = sum(v.numel() for v in load_checkpoint(fp32["checkpoint"])["model"].values())
    clients = len(fp32["rounds"][0]["participants"])
    per_client = [line["bytes_received"] / clients for line in fp32["rounds"]]
    per_client_fp16 = [line["bytes_received"] / clients for line in fp16["rounds"]]
    central_shard = union_shard(data, work / "central_data")
    total_updates = rounds * updates * clients
    central = fairseq_train(
        central_shard,
        work / "central",
        total_updates,
        "tiny",
        ["common.cpu=true", f"lr_scheduler.warmup_updates={10 * clients}"],
    )
    local = federated(
        prepare(toy, work / "four_clients_local_kmeans", 4, "local"), work / "fed_local_kmeans", rounds, updates
    )
    fed_quality, central_quality = (
        masked_accuracy(fp32["checkpoint"], central_shard),
        masked_accuracy(central["checkpoint"], central_shard),
    )
    ks_config = REPO / "recipes" / "superb" / "ks_tiny.yaml"
    keywords = toy / "speech_commands"
    ks = {}
    for name, ckpt in (
        ("federated", fp32["checkpoint"]),
        ("centralized", central["checkpoint"]),
        ("federated_local_kmeans", local["checkpoint"]),
    ):
        shutil.rmtree(work / "ks" / name, ignore_errors=True)
        ks[name] = keyword_spotting(Path(ckpt), work / "ks" / name, ks_config, keywords / "train", keywords / "test")[
            "test_acc"
        ]
    return {
        "communication": {
            "parameters": params,
            "bytes_per_client_round_float32": sum(per_client) / len(per_client),
            "ratio_to_4x_parameters": (sum(per_client) / len(per_client)) / (4 * params),
            "bytes_per_client_round_float16": sum(per_client_fp16) / len(per_client_fp16),
            "float16_bytes_ratio": sum(per_client_fp16) / sum(per_client),
            "valid_loss_float32": fp32["rounds"][-1]["valid"]["loss"],
            "valid_loss_float16": fp16["rounds"][-1]["valid"]["loss"],
            "float16_valid_loss_ratio": fp16["rounds"][-1]["valid"]["loss"] / fp32["rounds"][-1]["valid"]["loss"],
        },
        "quality": {
            "rounds": rounds,
            "local_updates": updates,
            "clients": clients,
            "total_updates": total_updates,
            "federated": fed_quality,
            "centralized": central_quality,
            "masked_acc_ratio_federated_over_centralized": fed_quality["valid_acc_masked"]
            / max(central_quality["valid_acc_masked"], 1e-9),
            "ks_test_acc": ks,
            "ks_ratio_federated_over_centralized": ks["federated"] / max(ks["centralized"], 1e-9),
            "ks_ratio_local_over_federated_kmeans": ks["federated_local_kmeans"] / max(ks["federated"], 1e-9),
            "local_kmeans_own_targets_valid_acc_masked": local["rounds"][-1]["valid"]["acc_masked"],
            "federated_kmeans_own_targets_valid_acc_masked": fp32["rounds"][-1]["valid"]["acc_masked"],
        },
    }


def prepare_vs_fairseq(work: Path) -> Dict:
    """3: benchmarks/prepare_vs_fairseq.py at 25 minutes of audio."""
    run(
        [sys.executable, str(REPO / "benchmarks" / "prepare_vs_fairseq.py"), "--minutes", "25"],
        work / "prepare_vs_fairseq.log",
    )
    return json.loads((RESULTS / "prepare_vs_fairseq_25min.json").read_text())


def row(*cells: str) -> str:
    """A markdown table row."""
    return "| " + " | ".join(cells) + " |"


def markdown(results: Dict) -> str:
    """results.md: one table per benchmark, ratios first."""
    meta, lines = results["meta"], ["# fedhubert benchmarks", ""]
    lines.append(
        f"{meta['date']}, {meta['machine']}, {meta['threads']} CPU threads, GPU: {meta['gpu']}; torch {meta['torch']}, "
        f"fairseq {meta['fairseq']}, flwr {meta['flwr']}, s3prl {meta['s3prl']}. "
        "Toy corpus, tiny recipe unless named.\n"
    )
    o = results.get("overhead")
    if o:
        lines += [
            "## 1. Federation overhead (target ≤ 1.10) and 5. memory (target ≤ 1.10)",
            "",
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
        lines += [f"| {k.replace('_', ' ')} | {v:.2f} |" for k, v in o["breakdown_seconds"].items()]
        lines.append("")
    c = results.get("communication")
    if c:
        lines += [
            "## 2. Communication",
            "",
            "| measure | value | ratio |",
            "| --- | --- | --- |",
            row(
                "bytes per client per round, float32",
                f"{c['bytes_per_client_round_float32'] / 1e6:.2f} MB",
                f"{c['ratio_to_4x_parameters']:.3f} of 4 × {c['parameters']} parameters",
            ),
            row(
                "bytes per client per round, float16 transport",
                f"{c['bytes_per_client_round_float16'] / 1e6:.2f} MB",
                f"{c['float16_bytes_ratio']:.3f} of float32 (target ≤ 0.5)",
            ),
            row(
                "validation loss after the last round, float16 against float32",
                f"{c['valid_loss_float16']:.4f} vs {c['valid_loss_float32']:.4f}",
                f"{c['float16_valid_loss_ratio']:.4f} (target within 1 %)",
            ),
            "",
        ]
    p = results.get("prepare")
    if p:
        lines += ["## 3. Data preparation against fairseq simple_kmeans (target ≥ 3×)", "", p["markdown"], ""]
    q = results.get("quality")
    if q:
        lines += [
            f"## 4. Quality: federated against centralized ({q['total_updates']} updates in all: "
            f"{q['rounds']} rounds × {q['local_updates']} × {q['clients']} clients)",
            "",
            "| measure | federated | centralized | ratio |",
            "| --- | --- | --- | --- |",
            row(
                "masked accuracy, union of the clients' valid splits",
                f"{q['federated']['valid_acc_masked']:.4f}",
                f"{q['centralized']['valid_acc_masked']:.4f}",
                f"{q['masked_acc_ratio_federated_over_centralized']:.2f}",
            ),
            f"| valid loss | {q['federated']['valid_loss']:.3f} | {q['centralized']['valid_loss']:.3f} | |",
            row(
                "KS test accuracy (ks_tiny)",
                f"{q['ks_test_acc']['federated']:.3f}",
                f"{q['ks_test_acc']['centralized']:.3f}",
                f"{q['ks_ratio_federated_over_centralized']:.2f}",
            ),
            "",
            "| k-means | masked accuracy on its own targets | KS test accuracy |",
            "| --- | --- | --- |",
            row(
                "federated (one codebook)",
                f"{q['federated_kmeans_own_targets_valid_acc_masked']:.4f}",
                f"{q['ks_test_acc']['federated']:.3f}",
            ),
            row(
                "local (one per client)",
                f"{q['local_kmeans_own_targets_valid_acc_masked']:.4f}",
                f"{q['ks_test_acc']['federated_local_kmeans']:.3f}",
            ),
            "",
        ]
    g = results.get("gpu")
    if g:
        lines += ["## 6. GPU (Base recipe, fp16)", "", g["note"] if "note" in g else json.dumps(g, indent=1), ""]
    for key, title in (
        ("distill_student", "7. Teacher against distilled student"),
        ("checkpoint_features", "8. Iteration-2 feature extraction"),
    ):
        if key in results:
            lines += [f"## {title}", "", results[key]["markdown"], ""]
    return "\n".join(lines)


def save(results: Dict) -> None:
    """Write results.json and results.md (after every section, so a failure keeps what was measured)."""
    RESULTS_JSON.write_text(json.dumps(results, indent=2) + "\n")
    RESULTS_MD.write_text(markdown(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-updates", type=int, default=10)
    parser.add_argument("--work", type=Path, default=Path("/tmp/fedhubert-benchmarks"))
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=SECTIONS,
        default=SECTIONS,
        help="run only these (the others are kept from the existing results.json), e.g. --sections gpu",
    )
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    toy = args.work / "toy"
    if not (toy / "toy_data.json").is_file():
        write_toy_data(toy, force=True)
    results = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.is_file() and args.sections != SECTIONS else {}
    results["meta"] = {
        **machine_meta(),
        "python": platform.python_version(),
        "fairseq": fairseq.__version__,
        "flwr": flwr.__version__,
        "s3prl": s3prl.__version__,
    }
    if "overhead" in args.sections:
        results["overhead"] = overhead_and_memory(args.work, toy, args.local_updates, overrides=["common.cpu=true"])
        save(results)
    if "quality" in args.sections:
        results.update(communication_and_quality(args.work, toy, args.rounds, args.local_updates))
        save(results)
    if "prepare" in args.sections:
        prepared = prepare_vs_fairseq(args.work)
        results["prepare"] = {**prepared, "markdown": (RESULTS / "prepare_vs_fairseq_25min.md").read_text()}
        save(results)
    for name in ("distill_student", "checkpoint_features"):  # issues 6 and 10: their own scripts
        if name in args.sections:
            run([sys.executable, str(REPO / "benchmarks" / f"{name}.py")], args.work / f"{name}.log")
            results[name] = {
                **json.loads((RESULTS / f"{name}.json").read_text()),
                "markdown": (RESULTS / f"{name}.md").read_text(),
            }
            save(results)
    if "gpu" in args.sections and torch.cuda.is_available():
        results["gpu"] = {
            "date": results["meta"]["date"],
            "device": torch.cuda.get_device_name(),
            **overhead_and_memory(args.work, toy, args.local_updates, "base", ["common.fp16=true"]),
        }
    elif "gpu" not in results:
        results["gpu"] = {
            "note": "not run: no NVIDIA GPU on this machine. "
            "On one, run `.venv/bin/python benchmarks/run_all.py --sections gpu`."
        }
    save(results)
    print(RESULTS_MD.read_text())


if __name__ == "__main__":
    main()
