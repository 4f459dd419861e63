"""The `rwkv-hub` command as a user runs it: a subprocess, its exit code and what it prints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rwkv_hub.core.synth import write_random_checkpoint

SHAPE = {"n_layer": 2, "n_embd": 128, "vocab_size": 256, "head_size": 64}


def rwkv_hub(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rwkv_hub", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_user_error(result: subprocess.CompletedProcess[str]) -> None:
    """A bad input is the user's problem: exit 2, one line on stderr, nothing on stdout, no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("rwkv-hub: error: ")
    assert len(lines[0]) > len("rwkv-hub: error: ") + 5


@pytest.fixture(scope="module", params=["pth", "safetensors"])
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / f"model.{request.param}"
    return write_random_checkpoint(path, **SHAPE)


def test_inspect_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pth"
    result = rwkv_hub("inspect", missing)
    assert_user_error(result)
    assert "nope.pth" in result.stderr


@pytest.mark.parametrize("name", ["x.pth", "x.safetensors"])
def test_inspect_not_a_checkpoint(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("this is a text file, not a model\n" * 20)
    assert_user_error(rwkv_hub("inspect", path))


def test_inspect_truncated_checkpoint(checkpoint: Path, tmp_path: Path) -> None:
    data = checkpoint.read_bytes()
    truncated = tmp_path / checkpoint.name
    truncated.write_bytes(data[: len(data) // 2])
    assert_user_error(rwkv_hub("inspect", truncated))


def test_inspect_table(checkpoint: Path) -> None:
    result = rwkv_hub("inspect", checkpoint)
    assert result.returncode == 0, result.stderr
    fields = {}
    for line in result.stdout.splitlines():
        name, _, value = line.strip().partition("  ")
        fields[name] = value.strip()
    assert fields["n_layer"] == "2"
    assert fields["n_embd"] == "128"
    assert fields["vocab_size"] == "256"
    assert fields["generation"] == "x070 (RWKV-7)"
    assert fields["format"] == checkpoint.suffix.lstrip(".")
    assert "cpu bf16" in fields
    assert "the embedding, 64.0 KiB, mapped from the file" in result.stdout  # 256 x 128 bf16


def test_inspect_json(checkpoint: Path) -> None:
    result = rwkv_hub("inspect", checkpoint, "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert {key: info[key] for key in SHAPE} == SHAPE
    assert info["n_head"] == SHAPE["n_embd"] // SHAPE["head_size"]
    assert info["format"] == checkpoint.suffix.lstrip(".")
    assert info["file_bytes"] == checkpoint.stat().st_size
    per_strategy = info["bytes_per_strategy"]
    assert per_strategy["cpu fp32"] > per_strategy["cpu bf16"] > per_strategy["cpu bf16i8"] > info["n_params"]


def test_no_command_is_a_usage_error() -> None:
    result = rwkv_hub()
    assert result.returncode == 2
    assert "usage: rwkv-hub" in result.stderr
    assert "Traceback" not in result.stderr


def test_bench_is_wired_when_installed() -> None:
    pytest.importorskip("rwkv_hub.bench")
    result = rwkv_hub("bench", "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: rwkv-hub bench" in result.stdout


@pytest.mark.parametrize("args", [["--help"], ["generate", "--help"], ["bench", "--help"]])
def test_help_does_not_import_torch(args):
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "rwkv_hub", *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "rwkv_hub.cli" in imported
    assert "torch" not in imported


def test_serve_on_a_port_in_use_is_a_one_line_user_error(tmp_path: Path) -> None:
    import os
    import socket

    ckpt = write_random_checkpoint(tmp_path / "model.pth", **SHAPE)
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path), "RWKV_HUB_TOKEN": "t"}
    serve = [sys.executable, "-m", "rwkv_hub", "serve", "--model", str(ckpt), "--strategy", "cpu fp32"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([*serve, "--port", str(port)], capture_output=True, text=True, env=env, timeout=120)
    assert_user_error(result)
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_a_closed_pipe_ends_quietly(checkpoint: Path) -> None:
    """`rwkv-hub inspect ... | head -1`: the reader leaves first; no BrokenPipeError traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "rwkv_hub", "inspect", "--json", str(checkpoint)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdout.close()  # before the command has printed anything
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0 and "Traceback" not in err, err


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys) -> None:
    """Ctrl-C while a model loads (or a benchmark runs) ends the command, not with a traceback."""
    import rwkv_hub.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    monkeypatch.setattr(parser, "parse_args", lambda argv: type("Args", (), {"run": staticmethod(interrupted)})())
    assert cli.main(["inspect", "x"]) == 130
    assert capsys.readouterr().err == "rwkv-hub: interrupted\n"


@pytest.mark.parametrize("port", ["70000", "-1", "http"])
def test_serve_refuses_a_port_out_of_range_before_loading(port: str) -> None:
    result = rwkv_hub("serve", "--port", port)
    assert result.returncode == 2 and "is not a port" in result.stderr and "Traceback" not in result.stderr


def test_serve_says_an_unusable_host_or_session_folder_before_loading(tmp_path: Path) -> None:
    """Both are said before the model loads: the model here does not even exist."""
    import os

    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path), "RWKV_HUB_TOKEN": "t"}
    serve = [sys.executable, "-m", "rwkv_hub", "serve", "--model", str(tmp_path / "absent.pth")]
    result = subprocess.run(
        [*serve, "--host", "no-such-host.invalid", "--allow-remote"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert_user_error(result)
    assert "cannot listen on no-such-host.invalid" in result.stderr and "absent.pth" not in result.stderr
    (tmp_path / "a-file").write_text("")
    config = tmp_path / "config.toml"
    config.write_text(f'session_folder = "{tmp_path / "a-file" / "sessions"}"\n')
    result = subprocess.run([*serve, "--config", str(config)], capture_output=True, text=True, env=env, timeout=60)
    assert_user_error(result)
    assert "cannot keep sessions in" in result.stderr and "session_folder" in result.stderr
    assert "absent.pth" not in result.stderr


def test_generate_says_a_bad_sampling_value_before_loading(tmp_path: Path) -> None:
    result = rwkv_hub("generate", "hi", "--model", str(tmp_path / "absent.pth"), "--top-p", "1.5")
    assert_user_error(result)
    assert "top_p" in result.stderr and "absent.pth" not in result.stderr


def test_the_lists_show_the_plugins_and_presets_of_the_config_file(tmp_path: Path) -> None:
    """`plugins`, `formats` and `presets` list what `serve` would load, config file included."""
    import os

    folder = tmp_path / "rwkv-hub"
    folder.mkdir()
    (folder / "config.toml").write_text('[plugins]\nmodules = ["good_plugin"]\n\n[presets.chat]\ntemperature = 0.9\n')
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path), "PYTHONPATH": str(Path(__file__).parent / "plugins")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "rwkv_hub", *args]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)

    presets = {p["name"]: p for p in json.loads(run("presets", "--json").stdout)["presets"]}
    assert presets["chat"]["params"]["temperature"] == 0.9 and "calm" in presets
    assert "shout" in run("formats").stdout
    (folder / "config.toml").write_text("this is not TOML")
    broken = run("presets")  # the lists still work, and say why the file's presets are not there
    assert broken.returncode == 0 and "chat" in broken.stdout and "Traceback" not in broken.stderr
    assert "warning: the config file is not used here, and `serve` will not start on it:" in broken.stderr
    (folder / "config.toml").write_text("[presets.chat]\ntop_p = 7\n")
    for command in ("presets", "formats"):
        bad = run(command, "--json")
        assert bad.returncode == 0 and json.loads(bad.stdout) and "top_p" in bad.stderr, bad.stderr
    served = run("serve", "--port", "0")  # the daemon refuses the same file, before loading a model
    assert served.returncode == 2 and "top_p" in served.stderr and "Traceback" not in served.stderr
