"""selfsup.pipelines: configs, data, runtime (engines), checkpoints and the training loop.

The config package imports no component; the components register their
sections, choices and checks with it at import. They are imported here, once,
so that a config is checked against all of them wherever it is loaded.
"""

from selfsup.pipelines.data import ffcv_loader, sources, train_loader  # noqa: F401
from selfsup.pipelines.runtime import engines  # noqa: F401
from selfsup.pipelines.train import build, momentum, optim, sparsity  # noqa: F401
from selfsup.pipelines.train.online import hook  # noqa: F401
