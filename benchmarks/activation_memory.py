"""Benchmark: HuBERT Base's training memory against max_tokens, with and without activation checkpointing.

Plain `fairseq-hydra-train` with the Base recipe, one update on one toy client shard, on the
CPU in float32, at two `dataset.max_tokens` settings, each with `model.checkpoint_activations`
false and true (fairseq's option: the encoder layers' activations are recomputed in the
backward pass). Peak RSS of the training process; the slope between the two settings is the
memory each batch sample costs, the intercept what does not depend on the batch (model,
optimizer state, runtime). From those, the largest max_tokens that fits a GPU of a given
memory, as a first guide: at the fp32 cost plus CUDA's own context (about 0.5 GB).

`--device cuda` makes the same runs on the GPU, still float32, and measures the peak GPU memory
fairseq's tensors took (`torch.cuda.max_memory_allocated`): the check of the CPU estimate.

    .venv/bin/python benchmarks/activation_memory.py [--max-tokens 350000 1400000] [--device cuda]

writes benchmarks/results/activation_memory.json and .md (activation_memory_gpu.* with --device cuda).
"""

import argparse
from pathlib import Path
from typing import Dict, List

import torch
from common import fairseq_train, prepare, write_results

from fedhubert_plugin.toy_data import write_toy_data

GPU_GB = (24, 40, 80)
CUDA_CONTEXT_MB = 512


def fit_line(rows: List[Dict], checkpointed: bool) -> Dict[str, float]:
    """Peak MB = intercept + slope * max_tokens, through the two settings measured."""
    low, high = sorted((r for r in rows if r["checkpoint_activations"] == checkpointed), key=lambda r: r["max_tokens"])
    slope = (high["peak_mb"] - low["peak_mb"]) / (high["max_tokens"] - low["max_tokens"])
    return {"mb_per_million_samples": slope * 1e6, "fixed_mb": low["peak_mb"] - slope * low["max_tokens"]}


def max_tokens_for(gpu_gb: int, line: Dict[str, float]) -> int:
    """The largest max_tokens whose fp32 estimate fits ``gpu_gb`` with CUDA's context."""
    room_mb = gpu_gb * 1024 - CUDA_CONTEXT_MB - line["fixed_mb"]
    return int(room_mb / line["mb_per_million_samples"] * 1e6 // 10_000 * 10_000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, nargs=2, default=[350_000, 1_400_000])
    parser.add_argument("--work", type=Path, default=Path("/tmp/fedhubert-bench-activations"))
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    on_gpu = args.device == "cuda"
    measure = "peak_gpu_mb" if on_gpu else "peak_rss_mb"

    toy = args.work / "toy"
    if not (toy / "LibriSpeech").is_dir():
        write_toy_data(toy, speakers=8, utterances_per_speaker=12, force=True)
    shard = prepare(toy, args.work / "data", 1) / "clients" / "client_000"
    rows = []
    for checkpointed in (False, True):
        for max_tokens in args.max_tokens:
            run = fairseq_train(
                shard,
                args.work / f"base_{max_tokens}_{'ckpt' if checkpointed else 'plain'}",
                1,
                "base",
                [
                    *([] if on_gpu else ["common.cpu=true"]),
                    "common.fp16=false",
                    f"dataset.max_tokens={max_tokens}",
                    f"model.checkpoint_activations={str(checkpointed).lower()}",
                ],
            )
            rows.append(
                {
                    "max_tokens": max_tokens,
                    "checkpoint_activations": checkpointed,
                    "peak_mb": round(run[measure]),
                    "wall_seconds": round(run["wall_seconds"], 1),
                }
            )
            print(rows[-1], flush=True)
    lines = {checkpointed: fit_line(rows, checkpointed) for checkpointed in (False, True)}
    peak = "peak GPU memory allocated" if on_gpu else "peak RSS"
    table = [
        f"| max_tokens | checkpoint_activations | {peak} | wall (one update, process start to end) |",
        "| --- | --- | --- | --- |",
    ]
    table += [
        f"| {r['max_tokens']:,} | {r['checkpoint_activations']} | {r['peak_mb']} MB | {r['wall_seconds']} s |"
        for r in rows
    ]
    table += [
        "",
        "| | per million samples in the batch (fp32) | fixed | max_tokens for a "
        + " / ".join(f"{gb} GB" for gb in GPU_GB)
        + f" GPU ({'from the GPU peaks' if on_gpu else 'estimate'}) |",
        "| --- | --- | --- | --- |",
    ]
    for checkpointed, line in lines.items():
        table.append(
            f"| {'checkpointed' if checkpointed else 'plain'} | {line['mb_per_million_samples']:.0f} MB "
            f"| {line['fixed_mb']:.0f} MB | " + " / ".join(f"{max_tokens_for(gb, line):,}" for gb in GPU_GB) + " |"
        )
    if on_gpu:
        note = (
            f"Base recipe on {torch.cuda.get_device_name()}, float32, one update; the GPU column adds "
            f"{CUDA_CONTEXT_MB} MB of CUDA context to fairseq's peak allocation (the caching allocator reserves "
            "somewhat more). Compare with the CPU estimate, results/activation_memory.md."
        )
    else:
        note = (
            "Base recipe, CPU, float32, one update; the GPU column takes the fp32 cost and adds "
            f"{CUDA_CONTEXT_MB} MB of CUDA context: an estimate, checked on a GPU by `--device cuda` "
            "(results/activation_memory_gpu.md). The recipe's own max_tokens is 1,400,000 per GPU."
        )
    name = "activation_memory_gpu" if on_gpu else "activation_memory"
    print(write_results(name, rows + [{"fit": {str(k): v for k, v in lines.items()}}], table, note))


if __name__ == "__main__":
    main()
