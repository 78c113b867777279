"""selfsup: self-supervised pretraining of vision backbones and its evaluation.

Sub-packages (one job each, dependencies flow one way):

- ``selfsup.ssl``: backbones (registered and any timm/torchvision model),
  methods (SimCLR, MAE, SimMIM, distillation, the supervised objective) around
  lightly's losses and modules, weight sparsity; no data, configs or I/O.
- ``selfsup.pipelines``: config, data (loaders), runtime (engines),
  checkpoints, training (the Trainer, its hooks).
- ``selfsup.slurm``: cluster jobs through submitit.
- ``selfsup.eval``: frozen-feature evaluation, fine-tuning, sweeps, reports.

Top-level modules serve every room: errors, registries, plugins, atomic writes,
logging set-up, safe text and safe unpickling.
"""

from __future__ import annotations

from selfsup.paths import checkout_root

__version__ = "0.1.0"

# In a source checkout the code folders (ssl/, pipelines/, slurm/, eval/) sit
# beside this one and setuptools maps them into this package through
# ``package-dir``. setuptools' editable finder cannot resolve a mapped
# sub-package without ``__init__.py`` (ssl/ must not have one, so that
# ``import ssl`` from the repository root still finds the standard library),
# so the checkout root is added to the search path here. An installed wheel
# holds the folders inside this package and never takes this branch.
_CHECKOUT = checkout_root()
if (_CHECKOUT / "ssl").is_dir() and (_CHECKOUT / "pyproject.toml").is_file():
    __path__.append(str(_CHECKOUT))
