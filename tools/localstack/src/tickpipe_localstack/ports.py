"""The local stacks' host ports, read from their one definition, ``deploy/ports.env``.

The same file is read by ``deploy/local/stack.sh`` and ``deploy/compose/run.sh`` (bash), so
it holds plain ``KEY=VALUE`` lines and comments only. Every value is a default: an environment
variable of the same name overrides it, as it does for the scripts. This package is installed
editable from the repository (``make venv``), which is how it finds the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[4]
PORTS_FILE = REPO / "deploy" / "ports.env"


def read_ports_file(path: Path = PORTS_FILE) -> dict[str, int]:
    """The file's defaults: ``{"TICKPIPE_KAFKA_PORT": 19092, ...}``."""
    ports: dict[str, int] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not value.strip().isdigit():
            raise ValueError(f"{path}:{number}: expected TICKPIPE_..._PORT=<number>, got {raw!r}")
        ports[key.strip()] = int(value)
    return ports


def ports(environ: Mapping[str, str] = os.environ, path: Path = PORTS_FILE) -> dict[str, int]:
    """The ports in effect: the file's defaults, each overridden by its environment variable."""
    effective = read_ports_file(path)
    for key in effective:
        given = environ.get(key, "").strip()
        if given:
            if not given.isdigit() or not 0 < int(given) < 65536:
                raise ValueError(f"{key} must be a port number, not {given!r}")
            effective[key] = int(given)
    return effective
