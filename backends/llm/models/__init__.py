"""Model architectures; each takes flattened token batches plus AttentionMetadata."""
