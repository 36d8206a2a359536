"""PyBullet twin of the PiPer cell: arm from DH, table-top scene, chained tasks, scripted expert.

Importing this package does not import PyBullet (names load lazily), so ``reconvla --help``
stays fast. Main entry points: ``PiperCellEnv``, ``SimConfig``, ``make_eval_chains``,
``Task``, ``Chain``, ``evaluate_policy``, ``collect``.

Modules: ``kinematics`` (DH forward kinematics, damped-least-squares IK), ``robot`` (URDF built
from the DH tables with simple shapes, speed-limited position control, coupled parallel
gripper), ``scene`` (seeded layouts: 5 coloured blocks, 2 bowls, 1-2 distractors), ``tasks``
(pick / place / stack, 4 paraphrases each, CALVIN-style chains), ``success`` (pose checks),
``camera`` (TinyRenderer, gaze-box projection), ``env`` (``PiperCellEnv``), ``expert``
(``ScriptedExpert``), ``relabel`` (``RelabelExpert``: the expert's command from the measured state,
DAgger labels), ``evaluate`` (chains -> metrics, chart, rollouts), ``collect`` (expert demonstrations
-> rosbag2), ``dagger`` (policy rollouts relabelled -> bags -> dataset -> finetune -> eval, per round),
``cli`` (``reconvla sim collect|frames``, ``reconvla eval sim|probe|recovery``, ``reconvla dagger``).

Decisions worth knowing:
- One collected episode = one subtask (constant instruction), cut from chains so training
  scenes look like evaluation scenes; later subtasks start where the previous one ended.
- The gaze box is the block the current subtask manipulates, in every phase (the same object
  the instruction-phrase detector picks on real data).
- Grasping is by friction only; the two fingers are coupled by a gear constraint (the real
  gripper's linkage). The measured gripper opening is saturated at the mechanical range.
- Objects live where a top-down grasp is reachable under the PiPer's joint limits (radius
  0.18..0.365 m, bearing +-55 deg); bowls hold at most two blocks per chain.
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
    "RelabelExpert": "reconvla_core.sim.relabel",
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
