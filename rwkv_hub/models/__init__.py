"""The built-in demo model (docs/default-model.md): checkpoint, tokenizer record and training record."""
