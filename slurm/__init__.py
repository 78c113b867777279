"""SLURM jobs through submitit."""
