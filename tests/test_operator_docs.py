"""What the README promises an operator, checked against what the commands do.

- ``radio_sim airtime`` prints what the README's comment says it prints;
- "Running it for real" starts with ``make install``, which installs the
  runtime only (no test extras), with scripts/bootstrap.sh's runtime mode.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def sh_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, re.S)


def test_readme_radio_sim_examples_print_what_they_say() -> None:
    found = 0
    for block in sh_blocks(README.read_text(encoding="utf-8")):
        for line in block.splitlines():
            command, _, comment = line.partition("  #")
            if "-m radio_sim airtime" not in command:
                continue
            argv = shlex.split(command)
            if argv[1:4] != ["-m", "radio_sim", "airtime"] or not comment.strip():
                continue
            found += 1
            r = subprocess.run(
                [sys.executable, *argv[1:]], capture_output=True, text=True, timeout=60, cwd=str(ROOT),
                env=dict(os.environ, PYTHONPATH=str(ROOT)),
            )
            assert r.returncode == 0, r.stderr
            assert r.stdout.strip() == comment.strip().lstrip("#").strip(), (r.stdout, comment)
    assert found, "the README shows no radio_sim airtime example with its output"


def test_running_it_for_real_starts_with_a_runtime_only_install() -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Running it for real") :]
    first = sh_blocks(section)[0].splitlines()[0]
    assert first.split("#")[0].strip() == "make install"
    dry = subprocess.run(
        ["make", "-n", "install", "VENV=/nonexistent/venv"], capture_output=True, text=True, cwd=str(ROOT)
    )
    assert dry.returncode == 0, dry.stderr
    assert "LOWBW_INSTALL=runtime scripts/bootstrap.sh" in dry.stdout
    script = (ROOT / "scripts" / "bootstrap.sh").read_text()
    runtime = script[script.index('if [ "$INSTALL" = runtime ]') :]
    runtime = runtime[: runtime.index("\nfi\n")]
    assert "pip install" in runtime and "-e ." in runtime and "[test]" not in runtime
    assert "apt-get" not in runtime and "exit 0" in runtime
