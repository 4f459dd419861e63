"""The Textual terminal UI (`rwkv-hub tui`), a client of the daemon."""
