"""Metrics: segmentation (confusion matrix, mIoU) and, later, interpretability."""
