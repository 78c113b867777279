"""Images in, batches of views out: datasets, sources, loaders, FFCV files, augmentation."""
