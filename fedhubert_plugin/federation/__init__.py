"""Flower apps: federated k-means (data preparation) and, on top of the same helpers, training."""
