"""PyBullet twin of the PiPer cell: arm from DH, table-top scene, chained tasks, scripted expert.

Importing this package does not import PyBullet (names load lazily), so ``reconvla --help``
stays fast. Main entry points: ``PiperCellEnv``, ``SimConfig``, ``make_eval_chains``,
``Task``, ``Chain``, ``evaluate_policy``, ``collect``.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "PiperCellEnv": "reconvla_core.sim.env",
    "SimConfig": "reconvla_core.sim.env",
    "validate_action": "reconvla_core.sim.env",
    "Task": "reconvla_core.sim.tasks",
    "Chain": "reconvla_core.sim.tasks",
    "TASK_FAMILIES": "reconvla_core.sim.tasks",
    "make_eval_chains": "reconvla_core.sim.tasks",
    "ScriptedExpert": "reconvla_core.sim.expert",
    "evaluate_policy": "reconvla_core.sim.evaluate",
    "collect": "reconvla_core.sim.collect",
    "piper_urdf": "reconvla_core.sim.robot",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'reconvla_core.sim' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
