"""Fine-tuning transfer: recipes (a registry), phases as Trainer runs, splits, history."""
