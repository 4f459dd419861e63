"""A plugin whose per-request hooks raise."""

from rwkv_hub import hookimpl


@hookimpl
def prepare_request(request):
    raise RuntimeError("prepare failed")


@hookimpl
def generation_finished(request, result):
    raise RuntimeError("observer failed")
