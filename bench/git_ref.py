"""Another git ref's sources, exported for a side-by-side benchmark run.

The benchmarks time this tree against a ref (``main`` by default) in one run, on one noisy
machine, so that ratios mean something. The ref's sources come out of ``git archive`` into a
temporary folder and run from there in the same virtualenv: only PYTHONPATH differs, so the
two sides share every installed dependency and differ only in our code.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def export_ref(ref: str, sources: Sequence[str], into: Path) -> str:
    """Export ``sources`` (folders of the repository) of ``ref`` into ``into``; returns the
    PYTHONPATH that imports them."""
    git = shutil.which("git") or "git"
    archive = subprocess.run(  # noqa: S603 - our own git and ref
        [git, "-C", str(REPO), "archive", ref, *sources],
        check=True,
        capture_output=True,
    ).stdout
    into.mkdir(parents=True, exist_ok=True)
    tar_path = into / "ref.tar"
    tar_path.write_bytes(archive)
    with tarfile.open(tar_path) as tar:
        tar.extractall(into, filter="data")
    return os.pathsep.join(str(into / path) for path in sources)
