"""Benchmark: `fedhubert prepare` against fairseq's simple_kmeans scripts, same audio, same machine, same run.

Baseline: fairseq's examples/hubert/simple_kmeans (dump_mfcc_feature -> learn_kmeans ->
dump_km_label) on one manifest of every utterance, 100 clusters, its default settings.
Ours: the whole `fedhubert prepare` (scan with full decode, speaker partition into
4 clients, MFCC per client, federated k-means through Flower's simulation, labels).
Quality: k-means inertia of both codebooks on the same pooled MFCC frames (fairseq's dump).

    .venv/bin/python benchmarks/prepare_vs_fairseq.py --minutes 25

writes benchmarks/results/prepare_vs_fairseq_<minutes>min.json and .md.
"""

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import fairseq
import joblib
import numpy as np
import soundfile as sf
import torch

from fedhubert_plugin.prepare import PrepareConfig, prepare
from fedhubert_plugin.targets.kmeans import nearest
from fedhubert_plugin.toy_data import TRAIN_SUBSET, write_toy_data

SIMPLE_KMEANS = Path(fairseq.__file__).parent / "examples" / "hubert" / "simple_kmeans"
RESULTS = Path(__file__).parent / "results"


def timed(cmd, cwd=None) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def fairseq_pipeline(librispeech: Path, work: Path, n_clusters: int) -> dict:
    """The three fairseq scripts on one manifest of every train utterance."""
    flacs = sorted((librispeech / TRAIN_SUBSET).rglob("*.flac"))
    lines = [str(librispeech)] + [f"{f.relative_to(librispeech)}\t{sf.info(f).frames}" for f in flacs]
    (work / "train.tsv").write_text("\n".join(lines) + "\n")
    py = sys.executable
    times = {
        "dump_mfcc_feature": timed(
            [py, "dump_mfcc_feature.py", str(work), "train", "1", "0", str(work / "feat")], cwd=SIMPLE_KMEANS
        ),
        "learn_kmeans": timed(
            [
                py,
                "learn_kmeans.py",
                str(work / "feat"),
                "train",
                "1",
                str(work / "km.bin"),
                str(n_clusters),
                "--percent",
                "-1",
            ],
            cwd=SIMPLE_KMEANS,
        ),
        "dump_km_label": timed(
            [py, "dump_km_label.py", str(work / "feat"), "train", str(work / "km.bin"), "1", "0", str(work / "lab")],
            cwd=SIMPLE_KMEANS,
        ),
    }
    return {"seconds": sum(times.values()), "steps": times, "utterances": len(flacs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=25.0, help="audio to synthesize (default 25)")
    parser.add_argument("--n-clusters", type=int, default=100)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--work", type=Path, default=Path("/tmp/fedhubert-bench-prepare"))
    args = parser.parse_args()

    utterances = int(np.ceil(args.minutes * 60 / 4.2))  # toy sentences last ~4.2 s
    speakers = int(np.clip(round(utterances / 12), args.clients, 90))  # 96 distinct toy voices in all
    toy = write_toy_data(
        args.work / "toy",
        speakers=speakers,
        dev_speakers=1,
        utterances_per_speaker=int(np.ceil(utterances / speakers)),
        keyword_speakers=2,
        keyword_repeats=1,
        force=True,
    )
    librispeech = Path(toy.librispeech_root)
    baseline_dir = args.work / "fairseq"
    baseline_dir.mkdir(parents=True, exist_ok=True)

    baseline = fairseq_pipeline(librispeech, baseline_dir, args.n_clusters)
    start = time.perf_counter()
    prepare(
        PrepareConfig(
            librispeech, [TRAIN_SUBSET], args.clients, args.work / "ours", min_seconds=0.5, n_clusters=args.n_clusters
        )
    )
    ours_seconds = time.perf_counter() - start

    frames = np.load(baseline_dir / "feat" / "train_0_1.npy")
    fairseq_inertia = float(nearest(frames, joblib.load(baseline_dir / "km.bin").cluster_centers_)[1].sum())
    ours_inertia = float(nearest(frames, np.load(args.work / "ours" / "kmeans" / "codebook.npy"))[1].sum())
    minutes = float(sum(sf.info(f).duration for f in (librispeech / TRAIN_SUBSET).rglob("*.flac")) / 60)
    federated = json.loads((args.work / "ours" / "kmeans" / "federated.json").read_text())
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, Python {platform.python_version()}",
        "versions": {"torch": torch.__version__, "fairseq": fairseq.__version__},
        "audio_minutes": round(minutes, 2),
        "n_clusters": args.n_clusters,
        "clients": args.clients,
        "fairseq_seconds": round(baseline["seconds"], 2),
        "fairseq_steps": {k: round(v, 2) for k, v in baseline["steps"].items()},
        "fedhubert_seconds": round(ours_seconds, 2),
        "fedhubert_federated_kmeans_seconds": round(federated["seconds"], 2),
        "speedup": round(baseline["seconds"] / ours_seconds, 2),
        "inertia_ratio_fedhubert_over_fairseq": round(ours_inertia / fairseq_inertia, 4),
    }
    RESULTS.mkdir(exist_ok=True)
    name = f"prepare_vs_fairseq_{args.minutes:g}min"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = (
        f"| audio | clusters | fairseq simple_kmeans | fedhubert prepare ({args.clients} clients, federated) "
        "| speed-up | inertia ours / fairseq |\n"
        f"| --- | --- | --- | --- | --- | --- |\n"
        f"| {minutes:.1f} min | {args.n_clusters} | {baseline['seconds']:.1f} s | {ours_seconds:.1f} s "
        f"(of which federated k-means {federated['seconds']:.1f} s) | {result['speedup']:.2f}x | "
        f"{result['inertia_ratio_fedhubert_over_fairseq']:.3f} |\n"
        f"\n{result['date']}, {result['machine']}; fairseq steps: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in result["fairseq_steps"].items())
        + "\n"
    )
    (RESULTS / f"{name}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
