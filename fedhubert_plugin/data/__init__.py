"""Data: scan a LibriSpeech tree, partition it into clients, read and write fairseq manifests and fine-tuning labels."""

PARTITIONS = ("speaker", "iid", "dirichlet")  # how utterances are split across clients (see data.partition)

# fine-tuning labels (``transcripts``): each client's folder for them, and the letters of every client's dictionary
FINETUNE_DIR = "finetune"
WORD_END = "|"
ALPHABET = (WORD_END, "'", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ")  # LibriSpeech transcripts: upper case and apostrophes
