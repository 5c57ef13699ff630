"""The implementations under test: each compiled function or class beside its pure-Python twin, as pytest parameters."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

import pytest

from fastmta._ext import COMPILED
from fastmta._ext.data_ref import DataScanner
from fastmta.events.records import Entry

NOT_COMPILED = "FASTMTA_NO_EXTENSIONS=1: the compiled modules are switched off"

Buffer = bytes | bytearray | memoryview
SplitLines = Callable[[Buffer, int, int], tuple[list[bytes | None], list[int]]]
ParseHeaders = Callable[[Buffer], tuple[dict[str, str], int]]
ReceivedJson = Callable[[bytes, int], tuple[str, float, bytes]]
ReceivedPayload = Callable[[bytes, int, str], tuple[str, bytes]]
ReceivedPayloads = Callable[[Sequence[Entry], int, int, str], tuple[bytes, int, int]]
ScannerClass = type[DataScanner]  # the twin's class stands for both: data.pyi declares the same surface


def both(module: str, name: str) -> list[pytest.ParameterSet]:
    """`name` from fastmta._ext.<module> and from its twin <module>_ref, the compiled one skipped when switched off."""
    twin = getattr(importlib.import_module(f"fastmta._ext.{module}_ref"), name)
    if COMPILED:
        compiled = pytest.param(getattr(importlib.import_module(f"fastmta._ext.{module}"), name), id="compiled")
    else:
        # Never import the .so here: with the switch on it may be stale or missing, and must not be needed.
        compiled = pytest.param(None, id="compiled", marks=pytest.mark.skip(reason=NOT_COMPILED))
    return [compiled, pytest.param(twin, id="twin")]
