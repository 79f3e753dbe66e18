"""Benchmark: `fedhubert prepare` against fairseq's simple_kmeans scripts as the audio grows, same machine, same run.

For each corpus size (synthetic toy LibriSpeech, ``--hours``, e.g. 0.5 2 8):

- fairseq: examples/hubert/simple_kmeans (dump_mfcc_feature -> learn_kmeans -> dump_km_label)
  on one manifest of every utterance, one shard, 100 clusters, its defaults (all frames);
- ours: the whole `fedhubert prepare` command (header scan, speaker partition into 4 clients,
  MFCC per client on all cores, federated k-means through Flower's simulation, labels).

Each side's wall seconds and peak memory: the proportional set size (PSS) summed over the
process and its children (Ray's workers included), sampled every 0.2 s, so that shared
libraries are counted once. Quality: k-means inertia of both codebooks on the same pooled
MFCC frames (fairseq's dump). The results extrapolate linearly (from the two largest sizes)
to 960 h.

    .venv/bin/python benchmarks/prepare_vs_fairseq.py --hours 0.5 2 8

writes benchmarks/results/prepare_vs_fairseq.json and .md. Corpora are kept in
``--corpora`` (synthesizing 8 h takes about 6 min on 2 cores) and reused.
"""

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Tuple

import fairseq
import joblib
import numpy as np
import psutil
import soundfile as sf
from common import BIN, write_results

from fedhubert_plugin.targets.kmeans import nearest
from fedhubert_plugin.toy_data import TRAIN_SUBSET, write_toy_data

SIMPLE_KMEANS = Path(fairseq.__file__).parent / "examples" / "hubert" / "simple_kmeans"
FEATURE_BYTES_PER_HOUR = 100 * 3600 * 39 * 4  # 39-dim float32 MFCC at 100 Hz


def tree_pss_mb(proc: psutil.Process) -> float:
    """PSS of ``proc`` and all its descendants (MB)."""
    total = 0
    for p in [proc] + proc.children(recursive=True):
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total / 2**20


def measured(cmd: List[str], log: Path, cwd: Path = None) -> Tuple[float, float]:
    """Run ``cmd``: its wall seconds and the peak PSS of its process tree (MB). Fails with the log's tail."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
        watched, peak = psutil.Process(proc.pid), [0.0]

        def sample() -> None:
            while proc.poll() is None:
                try:
                    peak[0] = max(peak[0], tree_pss_mb(watched))
                except psutil.NoSuchProcess:
                    return
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = proc.wait()
        sampler.join()
    if code:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed; see {log}:\n" + log.read_text()[-3000:])
    return time.perf_counter() - start, peak[0]


def corpus(corpora: Path, hours: float) -> Path:
    """A toy LibriSpeech of about ``hours`` of train audio (synthesized once, then reused)."""
    out = corpora / f"{hours:g}h"
    if not (out / "LibriSpeech" / TRAIN_SUBSET).is_dir():
        speakers = int(np.clip(round(hours * 60 / 4.2 / 12), 4, 90))  # 96 distinct toy voices in all
        write_toy_data(out, speakers=speakers, dev_speakers=1, minutes=hours * 60, keyword_speakers=2, force=True)
    return out / "LibriSpeech"


def fairseq_pipeline(librispeech: Path, work: Path, n_clusters: int) -> Dict:
    """The three fairseq scripts on one manifest of every train utterance: seconds and peak MB per step."""
    flacs = sorted((librispeech / TRAIN_SUBSET).rglob("*.flac"))
    lines = [str(librispeech)] + [f"{f.relative_to(librispeech)}\t{sf.info(str(f)).frames}" for f in flacs]
    (work / "train.tsv").write_text("\n".join(lines) + "\n")
    py = sys.executable
    steps = {
        "dump_mfcc_feature": ["dump_mfcc_feature.py", str(work), "train", "1", "0", str(work / "feat")],
        "learn_kmeans": [
            "learn_kmeans.py",
            *(str(work / "feat"), "train", "1", str(work / "km.bin"), str(n_clusters), "--percent", "-1"),
        ],
        "dump_km_label": [
            "dump_km_label.py",
            *(str(work / "feat"), "train", str(work / "km.bin"), "1", "0", str(work / "lab")),
        ],
    }
    results = {name: measured([py, *args], work / f"{name}.log", SIMPLE_KMEANS) for name, args in steps.items()}
    return {
        "seconds": sum(seconds for seconds, _ in results.values()),
        "peak_mb": max(peak for _, peak in results.values()),
        "steps": {name: round(seconds, 2) for name, (seconds, _) in results.items()},
    }


def one_size(hours: float, args: argparse.Namespace) -> Dict:
    """fairseq and fedhubert on one corpus size."""
    librispeech = corpus(args.corpora, hours)
    work = args.work / f"{hours:g}h"
    (work / "fairseq").mkdir(parents=True, exist_ok=True)
    baseline = fairseq_pipeline(librispeech, work / "fairseq", args.n_clusters)
    ours_seconds, ours_peak = measured(
        [
            str(BIN / "fedhubert"),
            "prepare",
            *("--librispeech-root", str(librispeech), "--subsets", TRAIN_SUBSET),
            *("--num-clients", str(args.clients), "--out", str(work / "ours"), "--min-seconds", "0.5"),
            *("--n-clusters", str(args.n_clusters)),
        ],
        work / "ours.log",
    )
    frames = np.load(work / "fairseq" / "feat" / "train_0_1.npy", mmap_mode="r")
    fairseq_inertia = float(nearest(frames, joblib.load(work / "fairseq" / "km.bin").cluster_centers_)[1].sum())
    ours_inertia = float(nearest(frames, np.load(work / "ours" / "kmeans" / "codebook.npy"))[1].sum())
    return {
        "audio_hours": round(len(frames) / 100 / 3600, 3),
        "fairseq_seconds": round(baseline["seconds"], 2),
        "fairseq_steps": baseline["steps"],
        "fairseq_peak_mb": round(baseline["peak_mb"]),
        "fedhubert_seconds": round(ours_seconds, 2),
        "fedhubert_peak_mb": round(ours_peak),
        "speedup": round(baseline["seconds"] / ours_seconds, 2),
        "inertia_ratio": round(ours_inertia / fairseq_inertia, 4),
    }


def extrapolate(rows: List[Dict], hours: float = 960.0) -> Dict:
    """Linear in the audio from the two largest sizes: seconds at ``hours`` for both sides."""
    a, b = sorted(rows, key=lambda r: r["audio_hours"])[-2:]
    span = b["audio_hours"] - a["audio_hours"]
    out = {"hours": hours, "feature_cache_gb": round(FEATURE_BYTES_PER_HOUR * hours / 1e9, 1)}
    for side in ("fairseq", "fedhubert"):
        slope = (b[f"{side}_seconds"] - a[f"{side}_seconds"]) / span
        out[f"{side}_seconds_per_hour"] = round(slope, 2)
        out[f"{side}_hours_at_960"] = round((b[f"{side}_seconds"] + slope * (hours - b["audio_hours"])) / 3600, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, nargs="+", default=[0.5, 2.0, 8.0], help="corpus sizes (train audio)")
    parser.add_argument("--n-clusters", type=int, default=100)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--corpora", type=Path, default=Path("/tmp/fedhubert-bench-corpora"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/fedhubert-bench-prepare"))
    args = parser.parse_args()

    rows = [one_size(hours, args) for hours in args.hours]
    ahead = extrapolate(rows)
    table = [
        "| audio | fairseq simple_kmeans | fairseq peak memory | fedhubert prepare | fedhubert peak memory "
        "| speed-up (target ≥ 3× at 8 h) | inertia ours / fairseq (target ≤ 1.05) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    table += [
        f"| {r['audio_hours']:.2f} h | {r['fairseq_seconds']:.1f} s | {r['fairseq_peak_mb']} MB "
        f"| {r['fedhubert_seconds']:.1f} s | {r['fedhubert_peak_mb']} MB | {r['speedup']:.2f}× "
        f"| {r['inertia_ratio']:.3f} |"
        for r in rows
    ]
    peaks = [r["fedhubert_peak_mb"] for r in rows]
    note = (
        f"{args.clients} clients, federated k-means, {args.n_clusters} clusters; fairseq one shard, all frames "
        f"(`--percent -1`). Peak memory: PSS of the process tree. fedhubert's peak memory from the smallest to the "
        f"largest corpus: ×{max(peaks) / min(peaks):.2f} (target ≤ 1.5). Per hour of audio, from the two largest "
        f"sizes: fairseq {ahead['fairseq_seconds_per_hour']:.1f} s, "
        f"fedhubert {ahead['fedhubert_seconds_per_hour']:.1f} s; at 960 h that is "
        f"{ahead['fairseq_hours_at_960']:.1f} h against {ahead['fedhubert_hours_at_960']:.1f} h "
        f"on this machine, and the clients' feature caches hold {ahead['feature_cache_gb']} GB on disk until their "
        f"labels are written (fairseq's dump holds the same, and learn_kmeans loads all of it into memory). "
        f"{os.cpu_count()} cores."
    )
    print(write_results("prepare_vs_fairseq", rows + [{"extrapolated": ahead}], table, note))


if __name__ == "__main__":
    main()
