"""torch.hub entry of this folder: ``torch.hub.load(DIR, "customized_upstream", source="local")``."""

from expert import UpstreamExpert as _UpstreamExpert


def customized_upstream(*args, **kwargs) -> _UpstreamExpert:
    """The HuBERT of ``model.pt`` (or of the checkpoint given as the first argument) as an s3prl upstream."""
    return _UpstreamExpert(*args, **kwargs)
