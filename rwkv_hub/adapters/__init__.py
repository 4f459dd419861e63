"""Adapters: the daemon (WebSocket protocol and OpenAI-compatible HTTP) and the clients that speak to it.

The server reaches the engine only through `rwkv_hub.hub.hub.Hub`; every other adapter is a client of
the daemon's protocol.
"""
