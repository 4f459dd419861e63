"""Chat bots: the shared core (`core.py`), the IRC bot (`irc.py`) and their runner (`runner.py`)."""
