"""Benchmark: teacher against distilled student, parameters and inference time per second of audio.

Pairs measured side by side in one run: HuBERT Base against student.yaml (hidden 384,
6 layers), and the tiny recipe against tiny_student.yaml. Inference is the s3prl upstream
forward (every hidden state) on 10 s of audio, batch 1, the median of repeated runs, on CPU
and on the GPU when there is one. Weights are the recipes' initial ones (speed and size do
not depend on training).

    .venv/bin/python benchmarks/distill_student.py

writes benchmarks/results/distill_student.json and .md.
"""

import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import write_results

from fedhubert_plugin.export import export_initial
from upstream.hubert_local.hubconf import hubert_local

REPO = Path(__file__).resolve().parents[1]
PAIRS = [
    ("base", "pretrain/base.yaml", "student", "distill/student.yaml"),
    ("tiny", "pretrain/tiny.yaml", "tiny_student", "distill/tiny_student.yaml"),
]
AUDIO_SECONDS = 10.0


def upstream_of(recipe: str, folder: Path):
    ckpt = export_initial(
        REPO / "recipes" / "librispeech" / recipe,
        folder / f"{Path(recipe).stem}.pt",
        100,
        100,
        ["common.fp16=false", "criterion.teacher_checkpoint=unused"] if "distill" in recipe else ["common.fp16=false"],
    )
    return hubert_local(ckpt=str(ckpt)).eval()


def seconds_per_audio_second(upstream, device: str, repeats: int) -> float:
    upstream = upstream.to(device)
    wav = [torch.randn(int(16000 * AUDIO_SECONDS), device=device)]
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            upstream(wav)
            if device == "cuda":
                torch.cuda.synchronize()
            if i:  # the first run warms up
                times.append(time.perf_counter() - start)
    return statistics.median(times) / AUDIO_SECONDS


def main() -> None:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for teacher_name, teacher_recipe, student_name, student_recipe in PAIRS:
            teacher, student = upstream_of(teacher_recipe, Path(tmp)), upstream_of(student_recipe, Path(tmp))
            params = [sum(p.numel() for p in m.model.parameters()) for m in (teacher, student)]
            for device in devices:
                repeats = 3 if device == "cpu" else 20
                t, s = (seconds_per_audio_second(m, device, repeats) for m in (teacher, student))
                rows.append(
                    {
                        "teacher": teacher_name,
                        "student": student_name,
                        "device": device,
                        "teacher_params": params[0],
                        "student_params": params[1],
                        "param_ratio": params[1] / params[0],
                        "teacher_s_per_audio_s": t,
                        "student_s_per_audio_s": s,
                        "time_ratio": s / t,
                    }
                )
    table = [
        "| teacher → student | device | parameters | ratio | s per s of audio (teacher → student) | ratio |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        table.append(
            f"| {r['teacher']} → {r['student']} | {r['device']} | "
            f"{r['teacher_params'] / 1e6:.2f} M → {r['student_params'] / 1e6:.2f} M | {r['param_ratio']:.2f} | "
            f"{r['teacher_s_per_audio_s']:.4f} → {r['student_s_per_audio_s']:.4f} | {r['time_ratio']:.2f} |"
        )
    print(
        write_results(
            "distill_student", rows, table, f"{AUDIO_SECONDS:.0f} s of audio, batch 1, median of repeated runs."
        )
    )


if __name__ == "__main__":
    main()
