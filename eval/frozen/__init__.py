"""Frozen-feature evaluation: features of a frozen backbone, kNN, the linear probe."""
