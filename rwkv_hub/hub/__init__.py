"""The hub: plugins (pluggy) and what they register: prompt formats, presets, commands, initial states.

Sits between the core (the model, the engine) and the adapters; it never imports torch at import time,
so listing plugins, formats and presets is fast.
"""
