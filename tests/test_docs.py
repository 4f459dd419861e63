"""The README's commands are the ones that work: CI runs its test command, and its quickstart runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    return re.findall(r"```sh\n(python3 -m venv .*)\n```", readme)


def test_ci_runs_the_readme_test_command() -> None:
    setup, test = readme_commands()
    assert "pytest" in test and "pytest" not in setup
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip()]
    assert ci_lines[-1] == test


def test_readme_setup_command_runs_the_quickstart() -> None:
    setup, _ = readme_commands()
    assert setup.endswith(".venv/bin/python examples/quickstart.py")


def test_quickstart_runs() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "next-token logits match = True" in result.stdout


def test_docs_links_resolve() -> None:
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
