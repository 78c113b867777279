"""Sweeps: probe and fine-tune arrays (SLURM), the sparsity sweep."""
