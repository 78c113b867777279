"""Evaluation of pretrained backbones, one room per concern.

- ``frozen/``: frozen-feature evaluation (feature extraction, kNN, the linear probe);
- ``finetune/``: fine-tuning transfer (recipes, phases, data splits, history, teacher
  classifiers for logit distillation);
- ``sweeps/``: many evaluations at once (probe and fine-tune arrays, the sparsity sweep);
- ``reports/``: what a user reads (report.md/json, plots, the terminal tables).
"""
