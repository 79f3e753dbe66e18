"""Peak GPU memory over a whole process, although fairseq's Trainer resets CUDA's peak counter after every update
(it logs ``gb_free`` from it)."""

import torch

_peak_before_resets = 0


def keep_peak_across_resets() -> None:
    """Make ``torch.cuda.reset_peak_memory_stats`` remember the peak it clears, for ``peak_gpu_mb``. Idempotent."""
    reset = torch.cuda.reset_peak_memory_stats
    if getattr(reset, "keeps_peak", False):
        return

    def remembering_reset(device=None) -> None:
        global _peak_before_resets
        _peak_before_resets = max(_peak_before_resets, torch.cuda.max_memory_allocated(device))
        reset(device)

    remembering_reset.keeps_peak = True
    torch.cuda.reset_peak_memory_stats = remembering_reset


def peak_gpu_mb() -> float:
    """The most GPU memory this process's tensors held since it started (MB), across fairseq's resets; 0 without
    a GPU."""
    if not torch.cuda.is_available():
        return 0.0
    return max(_peak_before_resets, torch.cuda.max_memory_allocated()) / 2**20
