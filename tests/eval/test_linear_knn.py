import torch

from selfsup.eval.frozen.linear import train_linear_classifier
from selfsup.ssl.knn import knn_accuracy


def clustered(n_per_class=50, classes=4, dim=16, noise=0.3, seed=0):
    """Samples around fixed class centres; ``seed`` changes only the noise."""
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(123)) * 3
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    g = torch.Generator().manual_seed(seed)
    return centres[labels] + noise * torch.randn(len(labels), dim, generator=g), labels


def test_linear_probe_separates_clusters_and_not_noise():
    x, y = clustered()
    xt, yt = clustered(seed=1)
    assert train_linear_classifier(x, y, xt, yt, 4, epochs=30, batch_size=32).top1 > 95
    noise = torch.randn_like(x)
    chance = train_linear_classifier(
        noise, y, torch.randn_like(xt), yt, 4, epochs=30, batch_size=32
    ).top1
    assert chance < 50


def test_linear_probe_is_deterministic():
    x, y = clustered(noise=3.0)
    a = train_linear_classifier(x, y, x, y, 4, epochs=5, seed=3)
    b = train_linear_classifier(x, y, x, y, 4, epochs=5, seed=3)
    assert a == b


def test_knn_uses_cosine_similarity_and_weighted_votes():
    x, y = clustered()
    xt, yt = clustered(seed=1)
    assert knn_accuracy(x, y, xt, yt, 4, k=10) > 95
    # Scaling a vector does not change its cosine neighbours.
    assert knn_accuracy(x * 100, y, xt, yt, 4, k=10) == knn_accuracy(x, y, xt, yt, 4, k=10)
    # k larger than the bank is clamped rather than failing: all 5 vote.
    assert knn_accuracy(x[:5], y[:5], xt, yt, 4, k=200) == knn_accuracy(
        x[:5], y[:5], xt, yt, 4, k=5
    )


def test_knn_votes_are_weighted_by_similarity_not_counted():
    # One bank vector of class 0 right on the query, three of class 1 far from it:
    # a majority vote of k=4 says 1; similarity-weighted votes (exp(sim / 0.1)) say 0.
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-0.2, 1.0], [0.2, -1.0]])
    labels = torch.tensor([0, 1, 1, 1])
    query = torch.tensor([[1.0, 0.05]])
    assert knn_accuracy(bank, labels, query, torch.tensor([0]), 2, k=4, temperature=0.1) == 100.0
    # With a large temperature every weight is about 1: the majority wins.
    assert knn_accuracy(bank, labels, query, torch.tensor([0]), 2, k=4, temperature=100.0) == 0.0
