"""Weighted kNN classification on frozen features (Wu et al. 2018; as lightly and solo-learn).

One function for the post-hoc probe (``selfsup probe``) and the online monitor
of a training run, so that the two report the same number on the same features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk: int = 1024,
) -> float:
    """Top-1 accuracy (%) of cosine-similarity kNN with ``exp(sim / t)`` vote weights."""
    # Imported here: lightly.utils.benchmarking imports pytorch_lightning, 1.6 s of every
    # process start (each rank, each relaunch) that never computes a kNN.
    from lightly.utils.benchmarking import knn_predict

    bank = F.normalize(train_features.float(), dim=1).t().contiguous()
    k = min(k, bank.shape[1])
    correct = 0
    for start in range(0, len(test_features), chunk):
        query = F.normalize(test_features[start : start + chunk].float(), dim=1)
        predicted = knn_predict(query, bank, train_labels, num_classes, knn_k=k, knn_t=temperature)
        correct += (predicted[:, 0] == test_labels[start : start + chunk]).sum().item()
    return 100.0 * correct / len(test_features)
