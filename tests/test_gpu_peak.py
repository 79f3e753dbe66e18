"""Peak GPU memory survives fairseq's per-update reset of CUDA's peak counter."""

import torch

from fedhubert_plugin import gpu_peak


def test_the_peak_before_a_reset_is_kept(monkeypatch):
    counter = {"peak": 0}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: counter["peak"])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: counter.update(peak=0))
    monkeypatch.setattr(gpu_peak, "_peak_before_resets", 0)
    gpu_peak.keep_peak_across_resets()
    gpu_peak.keep_peak_across_resets()  # once only
    counter["peak"] = 3 * 2**20  # an update's activations
    torch.cuda.reset_peak_memory_stats()  # what fairseq's Trainer does after each update
    counter["peak"] = 2**20
    assert gpu_peak.peak_gpu_mb() == 3.0
    counter["peak"] = 5 * 2**20
    assert gpu_peak.peak_gpu_mb() == 5.0
