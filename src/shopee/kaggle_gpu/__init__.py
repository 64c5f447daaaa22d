"""Training on Kaggle's GPUs from the command line: the kernel, its commands, its folds pulled home."""
