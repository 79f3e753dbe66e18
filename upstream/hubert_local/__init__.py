"""``hubert_local``: fedhubert checkpoints as an s3prl upstream."""
