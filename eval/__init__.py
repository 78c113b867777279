"""Evaluation of pretrained backbones: linear probe, kNN, reports."""
