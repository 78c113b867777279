"""What a run leaves on disk: checkpoints, weights, the run directory's layout and its tools."""
