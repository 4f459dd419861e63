"""The VS Code example's protocol code (compiled by .ci/run with `npm ci && npm run compile`) against a
real daemon: node runs the extension's live test, which must get the completion the daemon gives the same
request from Python."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from test_lsp import SOURCE, TOKEN, daemon, daemon_completion, run, ws_url  # noqa: F401 (daemon: a fixture)

EXT = Path(__file__).resolve().parents[1] / "examples" / "editors" / "vscode"
LIVE = EXT / "out" / "test" / "live.test.js"
PREFIX = "def add(a, b):\n    "


def test_the_vscode_extension_protocol_code_completes_from_a_real_daemon(daemon, tmp_path):  # noqa: F811
    node = shutil.which("node")
    if node is None or not LIVE.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{LIVE} is not built; .ci/run runs npm ci && npm run compile in {EXT}")
        pytest.skip(f"build the extension first: cd {EXT} && npm ci && npm run compile")
    expected = run(daemon_completion(daemon, PREFIX, max_lines=2, path="/tmp/rwkv-hub-vscode-live.py"))
    (tmp_path / "expected.json").write_text(json.dumps(expected))
    env = os.environ | {
        "RWKV_HUB_URL": ws_url(daemon),
        "RWKV_HUB_TOKEN": TOKEN,
        "RWKV_HUB_EXPECTED_FILE": str(tmp_path / "expected.json"),
    }
    done = subprocess.run([node, "--test", str(LIVE)], cwd=EXT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "# pass 1" in done.stdout and "# skipped 0" in done.stdout
