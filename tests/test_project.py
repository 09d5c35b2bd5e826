"""The project's promises about itself: README set-up commands are what CI runs; the CLI starts light."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import duorank

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_commands_verbatim():
    readme = (ROOT / "README.md").read_text()
    box = re.search(r"## Set up\n\n```bash\n(.*?)```", readme, re.S)
    assert box is not None, "README.md lost its Set up box"
    commands = [line for line in box.group(1).splitlines() if line.strip()]
    assert len(commands) == 2
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for command in commands:
        assert command in ci, f".ci/run does not run {command!r}"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "duorank.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_cli_help_and_version_without_numba():
    probe = "import sys, duorank, duorank.cli; duorank.cli._parser(); print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False"
    res = run_cli("--help")
    assert res.returncode == 0 and "usage: duorank" in res.stdout
    res = run_cli("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"duorank {duorank.__version__}"
    res = run_cli("--no-such-flag")
    assert res.returncode == 2 and "unrecognized arguments" in res.stderr
