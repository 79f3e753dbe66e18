"""HuBERT targets: frame features (MFCC, or a checkpoint's layer), k-means codebooks, label files."""

LABELS_META = "labels.json"  # beside a client's labels: label rate, features and k-means mode they were made with
FEATURES = ("hubert", "seed", "checkpoint")  # what k-means clusters (see targets.features)
KMEANS_MODES = ("federated", "local")  # one shared codebook through Flower, or one per client
