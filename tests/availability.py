"""One rule for a test whose service or tool is missing: skip on a developer's machine,
fail under ``CI=true`` (CI must never pass by skipping)."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(what: str, why: str) -> NoReturn:
    message = f"{what} is not available: {why}"
    if IN_CI:
        pytest.fail(message + " (CI=true: a missing service or tool fails the run)", pytrace=False)
    pytest.skip(message)
