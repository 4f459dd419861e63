"""The example third-party plugin, installed the way users install plugins (pip, entry point), is seen
by the CLI and used by the engine; its own test suite passes with rwkv-hub's pytest fixtures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "plugins" / "rwkv-hub-translate"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, str]:
    """pip-install the example into a folder of its own and return an environment that sees it."""
    target = tmp_path_factory.mktemp("site")
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target)]
    done = subprocess.run([*cmd, str(EXAMPLE)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}


def rwkv_hub(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rwkv_hub", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_the_cli_sees_the_installed_plugin(installed):
    report = json.loads(rwkv_hub(installed, "plugins", "--json").stdout)
    mine = next(p for p in report["plugins"] if p["name"] == "translate")
    assert mine["source"] == "entry point" and mine["version"] == "0.1.0"
    assert mine["registered"] == {"formats": ["translate"], "presets": ["translate"]}
    r = rwkv_hub(installed, "formats", "render", "translate", "--instruction", "French", "--input", "See you.")
    assert r.returncode == 0 and r.stdout.endswith("English: See you.\n\nFrench:\n")


def test_the_allow_list_can_switch_it_off(installed):
    report = json.loads(rwkv_hub({**installed, "RWKV_HUB_PLUGINS": ""}, "plugins", "--json").stdout)
    assert [p["name"] for p in report["plugins"]] == ["builtin"]


def test_the_engine_uses_it_and_its_own_tests_pass(installed):
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
        capture_output=True,
        text=True,
        env=installed,
        cwd=EXAMPLE,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout
