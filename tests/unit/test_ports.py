"""The local stacks' ports have one definition, ``deploy/ports.env``, that every reader uses."""

from __future__ import annotations

import os
import re
import subprocess

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
