"""The table-top cell: table, coloured blocks, bowls and distractors, fully determined by a seed.

``sample_layout(seed)`` is pure numpy (chains are planned from it without PyBullet);
``build_scene(client, layout)`` creates the bodies in a PyBullet client. All objects lie
in a ring sector in front of the arm where the top-down grasp is reachable
(radius ``WORK_RADIUS``, bearing within ``WORK_BEARING``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

COLOURS: dict[str, tuple[float, float, float, float]] = {
    "red": (0.85, 0.12, 0.10, 1.0),
    "green": (0.15, 0.65, 0.20, 1.0),
    "blue": (0.12, 0.30, 0.85, 1.0),
    "yellow": (0.95, 0.85, 0.10, 1.0),
    "purple": (0.55, 0.20, 0.70, 1.0),
    "orange": (0.98, 0.50, 0.05, 1.0),
}
DISTRACTOR_RGBA = ((0.45, 0.45, 0.45, 1.0), (0.95, 0.95, 0.95, 1.0), (0.35, 0.22, 0.12, 1.0))
TABLE_RGBA = (0.76, 0.66, 0.52, 1.0)

BLOCK_SIZE = 0.04  # cube edge, m
BLOCK_MASS = 0.05  # kg
BLOCK_FRICTION = 1.0
BOWL_INNER_RADIUS = 0.065
BOWL_WALL = 0.008
BOWL_HEIGHT = 0.03
BOWL_FLOOR = 0.006
WORK_RADIUS = (0.18, 0.365)
WORK_BEARING = math.radians(55.0)
N_BLOCKS = 5
N_BOWLS = 2
N_DISTRACTORS = (1, 2)
TABLE_HALF = (0.7, 0.8, 0.02)
TABLE_CENTRE = (0.15, 0.0)


@dataclass(frozen=True)
class ObjectSpec:
    """One object of the layout: ``kind`` block | bowl | distractor, a colour name (or
    ``distractor``), planar pose and, for distractors, the shape (``cylinder`` | ``sphere``)."""

    name: str
    kind: str
    colour: str
    rgba: tuple[float, float, float, float]
    x: float
    y: float
    yaw: float
    shape: str = "box"


@dataclass(frozen=True)
class Layout:
    seed: int
    objects: tuple[ObjectSpec, ...]

    def block_colours(self) -> list[str]:
        return [o.colour for o in self.objects if o.kind == "block"]

    def bowl_colours(self) -> list[str]:
        return [o.colour for o in self.objects if o.kind == "bowl"]

    def by_name(self, name: str) -> ObjectSpec:
        for obj in self.objects:
            if obj.name == name:
                return obj
        raise KeyError(name)


def _footprint(kind: str) -> float:
    """Clearance radius used when placing objects (fingers need room around blocks)."""
    return {"block": 0.045, "bowl": BOWL_INNER_RADIUS + BOWL_WALL + 0.01, "distractor": 0.035}[kind]


def sample_layout(seed: int) -> Layout:
    """Random layout for ``seed``: 5 blocks (distinct colours), 2 bowls, 1-2 distractors."""
    if int(seed) < 0:
        raise ValueError(f"scene seed must be >= 0, got {seed}")
    rng = np.random.default_rng([int(seed), 1])
    names = list(COLOURS)
    block_colours = [names[i] for i in rng.permutation(len(names))[:N_BLOCKS]]
    bowl_colours = [names[i] for i in rng.permutation(len(names))[:N_BOWLS]]
    n_distractors = int(rng.integers(N_DISTRACTORS[0], N_DISTRACTORS[1] + 1))
    wanted: list[tuple[str, str, str]] = [("bowl", c, f"{c}_bowl") for c in bowl_colours]
    wanted += [("block", c, f"{c}_block") for c in block_colours]
    wanted += [("distractor", "distractor", f"distractor_{i}") for i in range(n_distractors)]
    for _attempt in range(200):
        placed: list[ObjectSpec] = []
        ok = True
        for kind, colour, name in wanted:
            for _try in range(100):
                radius = float(np.sqrt(rng.uniform(WORK_RADIUS[0] ** 2, WORK_RADIUS[1] ** 2)))
                if kind == "bowl":  # bowls stay where the carry height is comfortably reachable
                    radius = min(radius, WORK_RADIUS[1] - 0.015)
                bearing = float(rng.uniform(-WORK_BEARING, WORK_BEARING))
                x, y = radius * math.cos(bearing), radius * math.sin(bearing)
                if all(
                    math.hypot(x - o.x, y - o.y) > _footprint(kind) + _footprint(o.kind) for o in placed
                ):
                    break
            else:
                ok = False
                break
            yaw = float(rng.uniform(-math.pi / 4, math.pi / 4))
            if kind == "distractor":
                shape = ("cylinder", "sphere")[int(rng.integers(2))]
                rgba = DISTRACTOR_RGBA[int(rng.integers(len(DISTRACTOR_RGBA)))]
            else:
                shape = "box" if kind == "block" else "bowl"
                rgba = COLOURS[colour]
            placed.append(ObjectSpec(name, kind, colour, rgba, x, y, yaw, shape))
        if ok:
            return Layout(seed=int(seed), objects=tuple(placed))
    raise RuntimeError(f"could not place the objects of scene {seed}")  # never seen; internal limit


def _bowl_shapes(client: object, rgba: tuple[float, ...]) -> tuple[int, int]:
    """A bowl = floor disc + 12 wall boxes on a ring (one compound collision shape)."""
    import pybullet as p

    n = 12
    half_len = (BOWL_INNER_RADIUS + BOWL_WALL) * math.tan(math.pi / n) + 0.002
    shape_types = [p.GEOM_CYLINDER] + [p.GEOM_BOX] * n
    radii = [BOWL_INNER_RADIUS + BOWL_WALL] + [0.0] * n
    lengths = [BOWL_FLOOR] + [0.0] * n
    half_extents = [[0, 0, 0]] + [[BOWL_WALL / 2, half_len, BOWL_HEIGHT / 2]] * n
    positions = [[0, 0, BOWL_FLOOR / 2]]
    orientations = [[0, 0, 0, 1]]
    for k in range(n):
        angle = 2 * math.pi * k / n
        r = BOWL_INNER_RADIUS + BOWL_WALL / 2
        positions.append([r * math.cos(angle), r * math.sin(angle), BOWL_HEIGHT / 2])
        orientations.append(list(p.getQuaternionFromEuler([0, 0, angle])))
    collision = client.createCollisionShapeArray(  # type: ignore[attr-defined]
        shapeTypes=shape_types,
        radii=radii,
        halfExtents=half_extents,
        lengths=lengths,
        collisionFramePositions=positions,
        collisionFrameOrientations=orientations,
    )
    visual = client.createVisualShapeArray(  # type: ignore[attr-defined]
        shapeTypes=shape_types,
        radii=radii,
        halfExtents=half_extents,
        lengths=lengths,
        rgbaColors=[list(rgba)] * (n + 1),
        visualFramePositions=positions,
        visualFrameOrientations=orientations,
    )
    return collision, visual


def build_scene(client: object, layout: Layout) -> dict[str, int]:
    """Create the table and the layout's objects; returns object name -> body id (table: ``table``)."""
    import pybullet as p

    c = client
    bodies: dict[str, int] = {}
    half = TABLE_HALF
    table_col = c.createCollisionShape(p.GEOM_BOX, halfExtents=half)  # type: ignore[attr-defined]
    table_vis = c.createVisualShape(p.GEOM_BOX, halfExtents=half, rgbaColor=TABLE_RGBA)  # type: ignore[attr-defined]
    bodies["table"] = c.createMultiBody(  # type: ignore[attr-defined]
        0, table_col, table_vis, [TABLE_CENTRE[0], TABLE_CENTRE[1], -half[2]]
    )
    c.changeDynamics(bodies["table"], -1, lateralFriction=0.8)  # type: ignore[attr-defined]
    half_block = BLOCK_SIZE / 2
    for obj in layout.objects:
        orientation = p.getQuaternionFromEuler([0, 0, obj.yaw])
        if obj.kind == "block":
            col = c.createCollisionShape(p.GEOM_BOX, halfExtents=[half_block] * 3)  # type: ignore[attr-defined]
            vis = c.createVisualShape(p.GEOM_BOX, halfExtents=[half_block] * 3, rgbaColor=obj.rgba)  # type: ignore[attr-defined]
            body = c.createMultiBody(BLOCK_MASS, col, vis, [obj.x, obj.y, half_block], orientation)  # type: ignore[attr-defined]
            c.changeDynamics(  # type: ignore[attr-defined]
                body, -1, lateralFriction=BLOCK_FRICTION, spinningFriction=0.002, rollingFriction=0.0005
            )
        elif obj.kind == "bowl":
            col, vis = _bowl_shapes(c, obj.rgba)
            body = c.createMultiBody(0, col, vis, [obj.x, obj.y, 0.0], orientation)  # type: ignore[attr-defined]
            c.changeDynamics(body, -1, lateralFriction=0.8)  # type: ignore[attr-defined]
        else:
            if obj.shape == "cylinder":
                col = c.createCollisionShape(p.GEOM_CYLINDER, radius=0.025, height=0.07)  # type: ignore[attr-defined]
                vis = c.createVisualShape(p.GEOM_CYLINDER, radius=0.025, length=0.07, rgbaColor=obj.rgba)  # type: ignore[attr-defined]
                z = 0.035
            else:
                col = c.createCollisionShape(p.GEOM_SPHERE, radius=0.025)  # type: ignore[attr-defined]
                vis = c.createVisualShape(p.GEOM_SPHERE, radius=0.025, rgbaColor=obj.rgba)  # type: ignore[attr-defined]
                z = 0.025
            # Distractors are static scenery (mass 0), never task objects.
            body = c.createMultiBody(0, col, vis, [obj.x, obj.y, z], orientation)  # type: ignore[attr-defined]
        bodies[obj.name] = body
    return bodies
