"""Training of the built-in demo model: corpus, trainable network, and the training loop (not used at run time)."""
