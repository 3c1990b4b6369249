"""What every benchmark prints beside its table: the machine, and which `bot` was measured."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import bot


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def bot_version() -> str:
    """Which `bot` package was measured: its folder, and its git commit if it is a checkout."""
    folder = Path(bot.__file__).resolve().parent

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True, check=False
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return f"{folder} (not a git checkout)"
    changed = git("status", "--porcelain", "--", ".")
    return f"{folder} at {commit}" + (" with uncommitted changes" if changed else "")


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
