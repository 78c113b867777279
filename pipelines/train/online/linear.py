"""An online linear classifier on the backbone's detached training features.

solo-learn's and lightly's online classifier: a linear layer trained on each
training batch's labels while pretraining runs, scored on held-out images, a
running answer to "would a linear probe work now?". Here it never touches
the run it watches: its own SGD (not a group of the run's optimizer, so the
run's gradient clipping, LARS trust ratios and ZeRO partitions are those of
an unmonitored run), features detached (no gradient reaches the backbone),
zero initial weights (no draw from the run's RNG), gradients averaged over
ranks by the engine's own reduction (every rank's copy stays identical).
Its weights and momenta go into every checkpoint (``hook_monitor.pt``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.pipelines.runtime.engines import Engine


class OnlineLinear:
    """A ``dim -> classes`` linear layer and its SGD, replicated on every rank."""

    def __init__(
        self, dim: int, classes: int, lr: float, momentum: float, device: torch.device
    ) -> None:
        # skip_init: nn.Linear's own initialisation would draw from the run's RNG.
        self.head = torch.nn.utils.skip_init(nn.Linear, dim, classes, device=device)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.optimizer = torch.optim.SGD(self.head.parameters(), lr=lr, momentum=momentum)

    def learn(self, features: Sequence[torch.Tensor], labels: Sequence[torch.Tensor]) -> None:
        """Gradients of the mean cross-entropy over the micro-batches (features of every view
        of a batch, in view order, labelled by the batch's labels)."""
        device = self.head.weight.device
        with torch.enable_grad(), torch.autocast(device.type, enabled=False):
            for batch_features, batch_labels in zip(features, labels, strict=True):
                views = len(batch_features) // len(batch_labels)
                targets = batch_labels.to(device).repeat(views)
                logits = self.head(batch_features.detach().float())
                (F.cross_entropy(logits, targets) / len(features)).backward()

    def step(self, engine: Engine) -> None:
        """Average the gradients over ranks, take one SGD step."""
        grads = [p.grad for p in self.head.parameters() if p.grad is not None]
        if not grads:
            return
        flat = engine.reduce_mean(torch.cat([g.flatten() for g in grads]))
        for grad, mean in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
            grad.copy_(mean.view_as(grad))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def accuracy(self, features: torch.Tensor, labels: torch.Tensor) -> float:
        """Top-1 accuracy (%) on ``features``."""
        predicted = self.head(features.float().to(self.head.weight.device)).argmax(dim=1)
        return 100.0 * (predicted.cpu() == labels.cpu()).float().mean().item()

    def state_dict(self) -> dict[str, Any]:
        return {"head": self.head.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
