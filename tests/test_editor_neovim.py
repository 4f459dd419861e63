"""A real editor: headless Neovim (Debian's 0.7, installed by .ci/run) loads the example configuration in
examples/editors/neovim/init.lua, which starts `rwkv-hub lsp` for a Python file; the completion,
inline completion and code actions it gets back come from a real daemon on loopback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_lsp import SOURCE, TOKEN, daemon, daemon_completion, run, ws_url  # noqa: F401 (daemon: a fixture)

ROOT = Path(__file__).resolve().parents[1]
INIT = ROOT / "examples" / "editors" / "neovim" / "init.lua"
SCRIPT = Path(__file__).with_name("editors") / "nvim_complete.lua"


def nvim() -> str:
    found = shutil.which("nvim")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("nvim is not installed; .ci/run installs Debian's neovim")
        pytest.skip("nvim is not installed (apt-get install neovim)")
    return found


def test_neovim_gets_completions_through_rwkv_hub_lsp(daemon, tmp_path):  # noqa: F811
    exe = nvim()
    source = tmp_path / "calc.py"
    source.write_text(SOURCE)
    token = tmp_path / "token"
    token.write_text(TOKEN)
    out = tmp_path / "out.json"
    options = {"url": ws_url(daemon), "token_file": str(token), "preset": "exact", "max_lines": 3}
    lua_options = "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in options.items()) + "}"
    env = os.environ | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # rwkv-hub itself
        "RWKV_TEST_FILE": str(source),
        "RWKV_TEST_OUT": str(out),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
    }
    cmd = [exe, "--headless", "-i", "NONE", "--cmd", f"lua vim.g.rwkv_hub_options = {lua_options}"]
    cmd += ["-u", str(INIT), "-c", f"luafile {SCRIPT}"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert out.exists(), f"nvim wrote nothing (exit {done.returncode}): {done.stderr[-2000:]}"
    got = json.loads(out.read_text())
    expected = run(daemon_completion(daemon, SOURCE, max_lines=3, path=str(source)))

    assert got["filetype"] == "python" and got["attached"]
    (item,) = got["completion"]["result"]["items"]
    assert item["textEdit"]["newText"] == expected and item["detail"] == "rwkv-hub"
    assert [i["insertText"] for i in got["inline"]["result"]["items"]] == [expected]
    titles = [a["title"] for a in got["actions"]["result"]]
    assert titles[:3] == ["RWKV: explain the selection", "RWKV: write a docstring", "RWKV: translate into English"]
