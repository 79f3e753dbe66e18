"""Data preparation: scan a LibriSpeech tree, partition it, write manifests and k-means labels."""

LABELS_META = "labels.json"  # beside a client's labels: label rate, features and k-means mode they were made with
