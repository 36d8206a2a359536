"""Why a subtask failed: what the twin saw of its block, its destination and the fingers.

``reconvla eval sim`` says how often each family succeeds; this says how the rest fail, which is
what decides the next fix (perception picks the wrong block, the grasp misses, the release is off).
``SubtaskWatch`` follows one subtask step by step (object positions and finger contacts only, no
images) and ``classify`` names its failure, the first of these that applies:

- ``wrong_block``: another block was lifted while the subtask's block never was grasped;
- ``pushed_away``: the block never grasped, and moved more than ``PUSH_DISTANCE`` (bumped off);
- ``not_grasped``: the block never between both fingers;
- ``not_lifted``: grasped, never raised to the pick's height;
- ``destination_moved`` (place, stack): the bowl or base block was shifted more than ``PUSH_DISTANCE``;
- ``held_over_target``: still between both fingers when the time ran out, within ``RELEASE_NEAR``
  of the destination (horizontally): the carry got there, the descent or the release did not happen;
- ``held_at_timeout``: still between both fingers when the time ran out, anywhere else (the carry
  did not arrive);
- ``not_carried``: let go again within ``RELEASE_NEAR`` of where it stood (the carry never got
  going: put back down, often to be grasped again, until the time ran out);
- ``released_off_target``: let go within ``RELEASE_NEAR`` of the destination and not resting on or in
  it (missed the top of the base block, the bowl's rim, tipped over);
- ``slipped``: lost from the fingers elsewhere while the gripper was still commanded shut (a weak or
  off-centre grasp, or knocked out on the way);
- ``dropped_away``: let go (the gripper commanded open) elsewhere.

Where a block was let go is where it last left the fingers, not where it lies when the time runs out
(a block dropped and then pushed on by the next attempts counts where it was dropped).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np

from reconvla_core.sim import success as checks
from reconvla_core.sim.scene import BLOCK_SIZE

if TYPE_CHECKING:
    from reconvla_core.sim.env import PiperCellEnv

FAILURE_MODES = ("wrong_block", "pushed_away", "not_grasped", "not_lifted", "destination_moved",
                 "held_over_target", "held_at_timeout", "released_off_target", "not_carried", "slipped",
                 "dropped_away")
PUSH_DISTANCE = 0.02  # m an object may be nudged (settling, a finger's touch) and still count as where it was
LIFTED_BY = 0.02  # m above where it stood: another block counts as lifted
RELEASE_NEAR = 0.05  # m (horizontal): a release this near the destination was aimed at it, this near its start put it back
OFF_CENTRE = 0.009  # m off the tool's centre: held further off, none of FGS's stacks succeeded (docs/study_recon.md)


@dataclasses.dataclass
class SubtaskTrace:
    """What a failure is judged by: positions at the start and end of the subtask, and what happened
    in between. Plain data, so ``classify`` is a pure function."""

    family: str
    block_start: np.ndarray
    block_end: np.ndarray
    destination_start: np.ndarray | None = None
    destination_end: np.ndarray | None = None
    grasped: bool = False  # the block was between both fingers at some step
    lifted: bool = False  # the block's bottom reached the pick's height
    other_lifted: bool = False  # another block rose LIFTED_BY above where it stood
    held_at_end: bool = False
    released_at: np.ndarray | None = None  # where the block last left the fingers; None: never after a grasp
    lost_while_shut: bool = False  # when the block last left the fingers, the gripper was commanded narrower than it


def classify(trace: SubtaskTrace) -> str:
    """The failure mode of a subtask that did not succeed (see the module docstring for the order)."""
    if not trace.grasped:
        if trace.other_lifted:
            return "wrong_block"
        moved = float(np.linalg.norm(trace.block_end[:2] - trace.block_start[:2]))
        return "pushed_away" if moved > PUSH_DISTANCE else "not_grasped"
    if not trace.lifted or trace.family == "pick":  # a pick fails only unlifted: it succeeds once lifted
        return "not_lifted"
    assert trace.destination_start is not None and trace.destination_end is not None
    if float(np.linalg.norm(trace.destination_end[:2] - trace.destination_start[:2])) > PUSH_DISTANCE:
        return "destination_moved"
    if trace.held_at_end:
        return "held_over_target" if _near(trace.block_end, trace.destination_end) else "held_at_timeout"
    where = trace.block_end if trace.released_at is None else trace.released_at
    if _near(where, trace.destination_end):
        return "released_off_target"
    if _near(where, trace.block_start):
        return "not_carried"
    return "slipped" if trace.lost_while_shut else "dropped_away"


def _near(position: np.ndarray, place: np.ndarray) -> bool:
    """Within ``RELEASE_NEAR`` of ``place``, horizontally (aimed at a destination, or put back where it stood)."""
    return float(np.linalg.norm(position[:2] - place[:2])) <= RELEASE_NEAR


class SubtaskWatch:
    """Follows the env's current subtask; ``update()`` after every step, ``trace()`` when it ends."""

    def __init__(self, env: PiperCellEnv) -> None:
        self.env = env
        task = env.current_task
        self.family = task.family
        self.block = env.target_object
        self.destination = env.destination_object
        self.others = {name: env.object_pose(name)[0][2] for name in env.bodies
                       if name.endswith("_block") and name != self.block}
        self.block_start = env.object_pose(self.block)[0]
        self.destination_start = env.object_pose(self.destination)[0] if self.destination else None
        self.grasped = self.lifted = self.other_lifted = self.holding = self.lost_while_shut = False
        self.released_at: np.ndarray | None = None
        self.in_hand_offset: float | None = None  # m, when the block was first lifted

    def update(self) -> None:
        env = self.env
        holding = all(env.touching_gripper(self.block))
        if holding:
            self.grasped = True
            if not self.lifted and checks.lifted(env.object_pose(self.block)[0]):
                self.lifted = True
                self.in_hand_offset = in_hand_offset(env, self.block)
        elif self.holding:  # it just left the fingers: where, and let go or lost from a shut gripper?
            self.released_at = env.object_pose(self.block)[0]
            self.lost_while_shut = bool(env.last_command[6] < BLOCK_SIZE)
        self.holding = holding
        if not self.grasped and not self.other_lifted:
            self.other_lifted = any(env.object_pose(name)[0][2] > z + LIFTED_BY for name, z in self.others.items())

    def trace(self) -> SubtaskTrace:
        env = self.env
        return SubtaskTrace(
            family=self.family, block_start=self.block_start, block_end=env.object_pose(self.block)[0],
            destination_start=self.destination_start,
            destination_end=env.object_pose(self.destination)[0] if self.destination else None,
            grasped=self.grasped, lifted=self.lifted, other_lifted=self.other_lifted,
            held_at_end=all(env.touching_gripper(self.block)), released_at=self.released_at,
            lost_while_shut=self.lost_while_shut,
        )


def in_hand_offset(env: PiperCellEnv, block: str) -> float:
    """Horizontal distance (m) of a held block's centre from the tool's: the fingers centre a block
    along their closing axis only, so a grasp off along their width carries it off-centre."""
    tool, _ = env.tcp_pose()
    return float(np.linalg.norm(env.object_pose(block)[0][:2] - tool[:2]))


def summarise_in_hand(holds: list[tuple[str, float, bool]]) -> dict[str, dict[str, dict[str, Any]]]:
    """(family, in-hand offset at the lift, succeeded) of the place and stack subtasks whose block was
    lifted -> per family and outcome: count, median offset (m), share held more than OFF_CENTRE off."""
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for family in ("place", "stack"):
        for outcome, succeeded in (("succeeded", True), ("failed", False)):
            offsets = np.array([o for f, o, ok in holds if f == family and ok == succeeded])
            if len(offsets):
                summary.setdefault(family, {})[outcome] = {
                    "n": int(len(offsets)), "median_m": round(float(np.median(offsets)), 4),
                    "share_off_centre": round(float(np.mean(offsets > OFF_CENTRE)), 3)}
    return summary


def summarise_failures(failures: list[tuple[str, str]]) -> dict[str, dict[str, int]]:
    """``(family, mode)`` pairs -> counts per family, modes in ``FAILURE_MODES`` order, zeros left out."""
    counts = Counter(failures)
    return {family: {mode: counts[family, mode] for mode in FAILURE_MODES if counts[family, mode]}
            for family in sorted({family for family, _ in failures})}
