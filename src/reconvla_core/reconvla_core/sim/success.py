"""Success detectors from object poses (pure functions, unit-tested on positive and negative cases).

Each takes world positions (metres) and, where it matters, whether the block still touches
the gripper: a place or stack only counts once the block is released and resting.
"""

from __future__ import annotations

import numpy as np

from reconvla_core.sim.scene import BLOCK_SIZE, BOWL_FLOOR, BOWL_HEIGHT, BOWL_INNER_RADIUS

LIFT_HEIGHT = 0.05  # a picked block's bottom is at least this far above the table
REST_SPEED = 0.05  # m/s: below this a block counts as resting


def lifted(block_pos: np.ndarray, table_z: float = 0.0) -> bool:
    """The block's bottom is at least LIFT_HEIGHT above the table."""
    return bool(block_pos[2] - BLOCK_SIZE / 2 - table_z >= LIFT_HEIGHT)


def in_bowl(block_pos: np.ndarray, bowl_pos: np.ndarray, touching_gripper: bool, speed: float = 0.0) -> bool:
    """The block rests inside the bowl: centred within the inner radius, bottom below the rim,
    released and (nearly) still."""
    horizontal = float(np.hypot(block_pos[0] - bowl_pos[0], block_pos[1] - bowl_pos[1]))
    bottom = block_pos[2] - BLOCK_SIZE / 2 - bowl_pos[2]
    return bool(
        horizontal <= BOWL_INNER_RADIUS - 0.01
        and BOWL_FLOOR - 0.01 <= bottom <= BOWL_HEIGHT
        and not touching_gripper
        and speed < REST_SPEED
    )


def on_block(
    top_pos: np.ndarray, base_pos: np.ndarray, touching_gripper: bool, speed: float = 0.0, table_z: float = 0.0
) -> bool:
    """``top`` rests on ``base``: horizontally overlapping by more than half, one block height
    above it, ``base`` on the table, released and (nearly) still."""
    horizontal = float(np.hypot(top_pos[0] - base_pos[0], top_pos[1] - base_pos[1]))
    dz = top_pos[2] - base_pos[2]
    return bool(
        horizontal <= 0.5 * BLOCK_SIZE
        and 0.85 * BLOCK_SIZE <= dz <= 1.2 * BLOCK_SIZE
        and base_pos[2] - BLOCK_SIZE / 2 - table_z < 0.01
        and not touching_gripper
        and speed < REST_SPEED
    )
