"""Shared fixtures: tiny random checkpoints in released HF layouts and their transformers oracles.

    def test_x(tiny_checkpoint, oracle_model):
        path = tiny_checkpoint("deepseek_v3", dtype="fp8")          # -> Path (built once per session)
        oracle = oracle_model("deepseek_v3", dtype="fp8")           # same build -> builders.Oracle
        oracle = oracle_model("deepseek_v3-fp8")                    # a named variant (builders.VARIANTS)

Arguments: ``family`` (one of builders.FAMILIES) or a variant name, then ``seed``, ``dtype``,
``sharded``, ``config_format`` and released-config overrides (see builders.build). Builds are cached
per parameter set under tmp_path_factory for the whole session.

``record_error(name, value)`` collects measured errors; they are printed in the terminal summary
(and written as JSON to $MTP_REF_ORACLE_ERRORS when that variable is set).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import builders  # noqa: E402
import torch  # noqa: E402

# The oracles are tiny: one thread is as fast, and does not thrash when the 2 cores are busy.
torch.set_num_threads(1)

_ERRORS: dict[str, float] = {}


def _key(name: str, kwargs: dict) -> str:
    return name + json.dumps(kwargs, sort_keys=True, default=repr)


@pytest.fixture(scope="session")
def _tiny_cache() -> dict:
    return {}


@pytest.fixture(scope="session")
def oracle_model(tmp_path_factory, _tiny_cache):
    def make(family: str, **kwargs) -> builders.Oracle:
        if family in builders.VARIANTS:
            if kwargs:
                raise TypeError("a named variant takes no further arguments")
            kwargs = builders.variant_kwargs(family)
            family = kwargs.pop("family")
        key = _key(family, kwargs)
        if key not in _tiny_cache:
            tag = re.sub(r"[^A-Za-z0-9_]+", "-", f"{family}-{kwargs.get('dtype', 'bf16')}")[:40]
            _tiny_cache[key] = builders.build(family, tmp_path_factory.mktemp(tag), **kwargs)
        return _tiny_cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_checkpoint(oracle_model):
    def make(family: str, **kwargs) -> Path:
        return oracle_model(family, **kwargs).path

    return make


@pytest.fixture(scope="session")
def record_error():
    def rec(name: str, value: float) -> None:
        _ERRORS[name] = float(value)

    return rec


def pytest_terminal_summary(terminalreporter):
    if not _ERRORS:
        return
    terminalreporter.section("engine vs transformers: max|a-b|/max|b|")
    width = max(len(k) for k in _ERRORS)
    for k, v in sorted(_ERRORS.items()):
        terminalreporter.write_line(f"{k:<{width}}  {v:.3e}")
    out = os.environ.get("MTP_REF_ORACLE_ERRORS")
    if out:
        Path(out).write_text(json.dumps(_ERRORS, indent=2, sort_keys=True))
