"""selfsup: self-supervised pretraining of vision backbones and its evaluation.

Sub-packages (one job each, dependencies flow one way):

- ``selfsup.ssl``: models, methods and losses (pure torch, no data or I/O).
- ``selfsup.pipelines``: configs, data, engines, checkpoints, the trainer.
- ``selfsup.slurm``: cluster jobs through submitit.
- ``selfsup.eval``: linear probe, kNN, fine-tuning and reports.
"""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

# In a source checkout the code folders (ssl/, pipelines/, slurm/, eval/) sit
# beside this one and setuptools maps them into this package through
# ``package-dir``. setuptools' editable finder cannot resolve a mapped
# sub-package without ``__init__.py`` (ssl/ must not have one, so that
# ``import ssl`` from the repository root still finds the standard library),
# so the checkout root is added to the search path here. An installed wheel
# holds the folders inside this package and never takes this branch.
_CHECKOUT = Path(__file__).resolve().parent.parent
if (_CHECKOUT / "ssl").is_dir() and (_CHECKOUT / "pyproject.toml").is_file():
    __path__.append(str(_CHECKOUT))  # type: ignore[name-defined]
