"""The local stacks' ports have one definition, ``deploy/ports.env``, that every reader uses."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tickpipe_localstack.ports import PORTS_FILE, REPO, ports, read_ports_file

COMPOSE_FILE = REPO / "deploy" / "compose" / "compose.yaml"
STACK = REPO / "deploy" / "local" / "stack.sh"


def test_the_ports_file_names_every_port_once_and_no_two_collide() -> None:
    defaults = read_ports_file()
    names = re.findall(r"^(TICKPIPE_[A-Z_]+)=", PORTS_FILE.read_text(), re.MULTILINE)
    assert len(names) == len(set(names)) == len(defaults)
    controllers = [defaults[k] + 1 for k in ("TICKPIPE_KAFKA_PORT", "TICKPIPE_KAFKA_SASL_PORT")]
    taken = [*defaults.values(), *controllers]  # the KRaft controllers take the next port
    assert len(taken) == len(set(taken)), defaults


def test_compose_fallbacks_equal_the_ports_file() -> None:
    fallbacks = dict(
        re.findall(r"\$\{(TICKPIPE_[A-Z_]+_PORT):-([0-9]+)\}", COMPOSE_FILE.read_text())
    )
    local_only = {"TICKPIPE_KAFKA_SASL_PORT"}  # the opt-in SASL broker of the local stack
    expected = {k: v for k, v in read_ports_file().items() if k not in local_only}
    assert {k: int(v) for k, v in fallbacks.items()} == expected


def test_environment_overrides_a_default_and_bad_values_are_refused() -> None:
    defaults = read_ports_file()
    effective = ports({"TICKPIPE_PG_PORT": "25432"})
    assert effective == {**defaults, "TICKPIPE_PG_PORT": 25432}
    with pytest.raises(ValueError, match="TICKPIPE_KAFKA_PORT"):
        ports({"TICKPIPE_KAFKA_PORT": "19o92"})


def test_the_stack_script_reads_the_same_ports() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKPIPE_")}
    defaults = read_ports_file()
    out = subprocess.run(
        ["bash", str(STACK), "env"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert f"KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{defaults['TICKPIPE_KAFKA_PORT']}\n" in out
    assert f"@127.0.0.1:{defaults['TICKPIPE_PG_PORT']}/marketdata\n" in out
    moved = subprocess.run(
        ["bash", str(STACK), "env"],
        env={**env, "TICKPIPE_PG_PORT": "25999"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "@127.0.0.1:25999/marketdata\n" in moved


PORTS_SH = REPO / "deploy" / "ports.sh"


def _bash(script: str, **environ: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKPIPE_")}
    return subprocess.run(
        ["bash", "-c", f"set -euo pipefail; source {PORTS_SH}; {script}"],
        env={**env, **environ}, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_the_shell_reader_gives_the_environment_then_the_env_files_then_the_default(
    tmp_path: Path,
) -> None:
    """deploy/ports.sh, what stack.sh and run.sh both source."""
    first, second = tmp_path / "first.env", tmp_path / "second.env"
    first.write_text("TICKPIPE_PG_PORT=25432\n# TICKPIPE_SIM_PORT=1\n")
    second.write_text("export TICKPIPE_PG_PORT=1\nTICKPIPE_SIM_PORT='28765'\n")
    names = " ".join(f"${name}" for name in read_ports_file())
    out = _bash(
        f"load_ports {first} {second} {tmp_path / 'absent.env'}; echo {names}",
        TICKPIPE_KAFKA_PORT="29092",
    )
    assert out.returncode == 0, out.stderr
    expected = {
        **read_ports_file(),
        "TICKPIPE_KAFKA_PORT": 29092,  # the environment
        "TICKPIPE_PG_PORT": 25432,  # the first file that sets it
        "TICKPIPE_SIM_PORT": 28765,  # the second file (a comment is no setting)
    }
    assert out.stdout.split() == [str(port) for port in expected.values()]


def test_the_shell_reader_refuses_what_is_no_port(tmp_path: Path) -> None:
    for bad in ("19o92", "0", "65536", "-1"):
        out = _bash("load_ports; echo loaded", TICKPIPE_KAFKA_PORT=bad)
        assert out.returncode == 2, bad
        assert f"TICKPIPE_KAFKA_PORT must be a port number, not '{bad}'" in out.stderr
        assert "loaded" not in out.stdout
    stack = subprocess.run(
        ["bash", str(STACK), "env"], env={**os.environ, "TICKPIPE_PG_PORT": "5432x"},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert stack.returncode == 2
    assert "stack.sh: TICKPIPE_PG_PORT must be a port number" in stack.stderr


def test_env_file_values(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "KEY=first\n  export KEY = \"second value\"  \nOTHER=x\nKEYS=no\n#KEY=comment\nKEY='last'"
    )
    assert _bash(f"env_file_value {env_file} KEY").stdout == "last"  # no newline at the end
    assert _bash(f"env_file_value {env_file} MISSING").stdout == ""
    assert _bash(f"env_file_value {tmp_path / 'absent'} KEY").stdout == ""
