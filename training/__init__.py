"""Training layer: corpus -> device batches + augmentation -> VGG13 -> checkpoints, metrics, MLflow."""
