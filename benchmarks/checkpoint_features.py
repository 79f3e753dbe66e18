"""Benchmark: iteration-2 feature extraction (a HuBERT layer), seconds per hour of audio, and disk per hour.

Extraction is `fedhubert prepare --features checkpoint`'s own extractor (CheckpointFeatures:
one utterance at a time, GPU when present) on toy utterances; HuBERT Base at layer 6 and the
tiny recipe at layer 1, initial weights (speed does not depend on training). Disk is what a
client holds while its k-means runs: float32 frames at 50 Hz.

    .venv/bin/python benchmarks/checkpoint_features.py [--seconds 120] [--toy DIR]

writes benchmarks/results/checkpoint_features.json and .md.
"""

import argparse
import tempfile
import time
from pathlib import Path

import soundfile as sf
import torch
from common import write_results

from fedhubert_plugin.export import export_initial
from fedhubert_plugin.targets.features import CheckpointFeatures
from fedhubert_plugin.toy_data import TRAIN_SUBSET, write_toy_data

REPO = Path(__file__).resolve().parents[1]
MODELS = [("base", "pretrain/base.yaml", 6), ("tiny", "pretrain/tiny.yaml", 1)]


def toy_utterances(folder: Path, seconds: float, synthesize: bool = True):
    """At least ``seconds`` of toy speech, as float32 arrays; from the toy corpus in ``folder``, written there first
    when ``synthesize``."""
    if synthesize:
        write_toy_data(
            folder,
            speakers=16,
            dev_speakers=1,
            utterances_per_speaker=12,
            keyword_speakers=2,
            keyword_repeats=1,
            force=True,
        )
    wavs, total = [], 0.0
    for flac in sorted((folder / "LibriSpeech" / TRAIN_SUBSET).rglob("*.flac")):
        wav, _ = sf.read(flac, dtype="float32")
        wavs.append(wav)
        total += len(wav) / 16000
        if total >= seconds:
            break
    return wavs, total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=120.0, help="audio to extract (default 120 s)")
    parser.add_argument("--toy", type=Path, help="a toy corpus already written (default: synthesize one)")
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        wavs, audio = toy_utterances(args.toy or Path(tmp) / "toy", args.seconds, synthesize=args.toy is None)
        for name, recipe, layer in MODELS:
            ckpt = export_initial(
                REPO / "recipes" / "librispeech" / recipe, Path(tmp) / f"{name}.pt", 100, 100, ["common.fp16=false"]
            )
            for device in devices:
                extractor = CheckpointFeatures(str(ckpt), layer, device=device)
                extractor(wavs[0])  # warm-up
                start = time.perf_counter()
                frames = sum(len(extractor(wav)) for wav in wavs)
                if device == "cuda":
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - start
                rows.append(
                    {
                        "model": name,
                        "layer": layer,
                        "device": device,
                        "audio_seconds": audio,
                        "frames": frames,
                        "seconds": seconds,
                        "seconds_per_audio_hour": seconds / audio * 3600,
                        # the bytes prepare's feature cache (features/*.f32) takes for the frames made here
                        "disk_mb_per_audio_hour": frames * extractor.dim * 4 / audio * 3600 / 1e6,
                    }
                )
    table = [
        "| model (layer) | device | s per hour of audio | real-time factor | float32 features per hour of audio |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        table.append(
            f"| {r['model']} ({r['layer']}) | {r['device']} | {r['seconds_per_audio_hour']:.0f} | "
            f"{r['seconds_per_audio_hour'] / 3600:.3f} | {r['disk_mb_per_audio_hour']:.0f} MB |"
        )
    print(
        write_results(
            "checkpoint_features",
            rows,
            table,
            f"{rows[0]['audio_seconds']:.0f} s of toy speech, one utterance at a time.",
        )
    )


if __name__ == "__main__":
    main()
