"""Datasets: the prepared on-disk format, the embedded synthetic dataset, transforms and loaders."""
