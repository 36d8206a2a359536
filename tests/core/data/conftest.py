"""Fixtures of the data tests: synthetic bags with known values (see data_synthetic.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from data_synthetic import BagSpec, write_bag


@pytest.fixture

def make_bag(tmp_path: Path) -> Callable[..., Path]:
    counter = {"n": 0}

    def factory(name: str | None = None, root: Path | None = None, **kwargs) -> Path:
        counter["n"] += 1
        folder = root or tmp_path / "bags"
        return write_bag(folder / (name or f"episode_{counter['n']:03d}"), BagSpec(**kwargs))

    return factory
