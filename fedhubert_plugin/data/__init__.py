"""Data: scan a LibriSpeech tree, partition it into clients, read and write fairseq manifests."""

PARTITIONS = ("speaker", "iid", "dirichlet")  # how utterances are split across clients (see data.partition)
