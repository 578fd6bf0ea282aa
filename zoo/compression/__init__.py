"""Compressing images with a model's encoder and restoring them with its decoder."""
