"""Images in, tensors out: decoding, caching, augmentation presets and loaders."""
