"""The README documents every setting each service reads, and no setting that does not exist."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic_settings import BaseSettings

from tickpipe_common.settings import environment_variables
from tickpipe_consumer.settings import ConsumerSettings
from tickpipe_localstack.ports import read_ports_file
from tickpipe_market_sim.settings import SimSettings
from tickpipe_producer_crypto.settings import CryptoProducerSettings
from tickpipe_producer_stocks.settings import StockProducerSettings

README = Path(__file__).resolve().parents[2] / "README.md"
STACK_VARIABLES = {"TICKPIPE_RUN_DIR", *read_ports_file()}


def test_every_setting_is_in_the_readme_tables() -> None:
    documented = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \|", README.read_text(), re.MULTILINE))
    classes: list[type[BaseSettings]] = [
        StockProducerSettings,
        CryptoProducerSettings,
        ConsumerSettings,
        SimSettings,
    ]
    real = set().union(*(environment_variables(c) for c in classes)) | STACK_VARIABLES
    assert real - documented == set(), "settings missing from README"
    assert documented - real == set(), "README documents settings that do not exist"
