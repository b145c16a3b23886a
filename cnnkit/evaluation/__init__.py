"""Judging a trained model: evaluate (and TTA), metrics, predict on images, export."""
