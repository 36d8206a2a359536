"""Task families, instruction templates, CALVIN-style chains and the fixed evaluation set.

Pure Python (no PyBullet): a chain is planned symbolically from the scene layout so that
every subtask is feasible when the earlier ones succeeded, exactly as CALVIN samples its
5-step sequences. Success checks from object poses live in ``success.py``.

Families (``TASK_FAMILIES``):
- ``pick``  - "pick up the {obj} block": lift the block at least ``LIFT_HEIGHT`` off the table.
- ``place`` - "put the {obj} block in the {dest} bowl": the block rests inside the bowl.
- ``stack`` - "stack the {obj} block on the {dest} block": the block rests on the other one.

After ``pick`` the arm holds the block, so the next subtask of a chain places or stacks
that same block (as CALVIN's "lift" tasks are followed by "place" tasks).
"""

from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

TASK_FAMILIES: tuple[str, ...] = ("pick", "place", "stack")
CHAIN_LENGTH = 5
BOWL_CAPACITY = 2  # blocks a chain puts into one bowl

TEMPLATES: dict[str, tuple[str, ...]] = {
    "pick": (
        "pick up the {obj} block",
        "lift the {obj} block",
        "grasp the {obj} block and lift it",
        "pick the {obj} cube up off the table",
    ),
    "place": (
        "put the {obj} block in the {dest} bowl",
        "place the {obj} block into the {dest} bowl",
        "move the {obj} cube into the {dest} bowl",
        "drop the {obj} block in the {dest} bowl",
    ),
    "stack": (
        "stack the {obj} block on the {dest} block",
        "put the {obj} block on top of the {dest} block",
        "place the {obj} cube onto the {dest} cube",
        "stack the {obj} cube on top of the {dest} one",
    ),
}


@dataclass(frozen=True)
class Task:
    """One subtask: family, manipulated block colour, destination colour (bowl or block) and
    which instruction template (paraphrase) words it."""

    family: str
    obj: str
    dest: str | None = None
    template: int = 0

    def __post_init__(self) -> None:
        if self.family not in TASK_FAMILIES:
            raise ValueError(f"unknown task family {self.family!r}; known: {', '.join(TASK_FAMILIES)}")
        if self.family == "pick" and self.dest is not None:
            raise ValueError("a pick task takes no destination")
        if self.family != "pick" and not self.dest:
            raise ValueError(f"a {self.family} task needs a destination colour")
        if self.family == "stack" and self.dest == self.obj:
            raise ValueError(f"cannot stack the {self.obj} block on itself")
        if not 0 <= self.template < len(TEMPLATES[self.family]):
            raise ValueError(f"template must be in 0..{len(TEMPLATES[self.family]) - 1}, got {self.template}")

    @property
    def instruction(self) -> str:
        return TEMPLATES[self.family][self.template].format(obj=self.obj, dest=self.dest)

    @property
    def name(self) -> str:
        """Canonical short form, e.g. ``place red blue``."""
        return f"{self.family} {self.obj}" + (f" {self.dest}" if self.dest else "")

    @classmethod
    def parse(cls, text: str) -> Task:
        """``"pick red"``, ``"place red blue"``, ``"stack red green"`` or any template's instruction."""
        words = text.strip().lower().split()
        if not words:
            raise ValueError("empty task")
        if words[0] in TASK_FAMILIES and len(words) in (2, 3):
            return cls(words[0], words[1], words[2] if len(words) == 3 else None)
        for family, templates in TEMPLATES.items():
            for index, template in enumerate(templates):
                pattern = "^" + re.escape(template).replace(r"\{obj\}", r"(?P<obj>\w+)").replace(
                    r"\{dest\}", r"(?P<dest>\w+)"
                ) + "$"
                match = re.match(pattern, " ".join(words))
                if match:
                    return cls(family, match.group("obj"), match.groupdict().get("dest"), index)
        raise ValueError(
            f"unknown task {text!r}; use 'pick COLOUR', 'place COLOUR BOWL_COLOUR', 'stack COLOUR COLOUR' "
            f"or an instruction such as {TEMPLATES['place'][0].format(obj='red', dest='blue')!r}"
        )


@dataclass(frozen=True)
class Chain:
    """A CALVIN-style sequence: the scene seed plus the subtasks to do in a row."""

    seed: int
    tasks: tuple[Task, ...] = field(default_factory=tuple)

    def instructions(self) -> list[str]:
        return [task.instruction for task in self.tasks]


@dataclass
class SymbolicState:
    """What the chain planner tracks: blocks free on the table, the held block, used blocks."""

    free: list[str]  # on the table with nothing on top, not in a bowl
    bowls: list[str]
    held: str | None = None
    in_bowl: dict[str, int] = field(default_factory=dict)  # bowl colour -> blocks placed in it

    def feasible(self) -> list[tuple[str, str, str | None]]:
        options: list[tuple[str, str, str | None]] = []
        movable = [self.held] if self.held else list(self.free)
        for obj in movable:
            if not self.held:
                options.append(("pick", obj, None))
            for bowl in self.bowls:
                if self.in_bowl.get(bowl, 0) < BOWL_CAPACITY:
                    options.append(("place", obj, bowl))
            for base in self.free:
                if base != obj:
                    options.append(("stack", obj, base))
        return options

    def apply(self, family: str, obj: str, dest: str | None) -> None:
        if family == "pick":
            self.free.remove(obj)
            self.held = obj
            return
        if self.held == obj:
            self.held = None
        else:
            self.free.remove(obj)
        if family == "place":
            self.in_bowl[str(dest)] = self.in_bowl.get(str(dest), 0) + 1
        if family == "stack":
            self.free.remove(str(dest))  # covered now; the stacked block is not reused either


def _completable(state: SymbolicState, remaining: int) -> bool:
    """Whether ``remaining`` more subtasks can follow ``state`` (depth-first, first hit wins)."""
    if remaining == 0:
        return True
    for family, obj, dest in state.feasible():
        nxt = copy.deepcopy(state)
        nxt.apply(family, obj, dest)
        if _completable(nxt, remaining - 1):
            return True
    return False


def plan_chain(
    seed: int, block_colours: list[str], bowl_colours: list[str], rng: np.random.Generator, length: int = CHAIN_LENGTH
) -> Chain:
    """Sample ``length`` subtasks, each feasible if the previous ones succeeded.

    At each position a family is drawn uniformly among the feasible ones whose choice still
    leaves the rest of the chain feasible, then its objects and its paraphrase template.
    """
    state = SymbolicState(free=list(block_colours), bowls=list(bowl_colours))
    tasks: list[Task] = []
    for position in range(length):
        remaining = length - position - 1
        options = []
        for option in state.feasible():
            nxt = copy.deepcopy(state)
            nxt.apply(*option)
            if _completable(nxt, remaining):
                options.append(option)
        if not options:
            raise ValueError(f"scene {seed} has too few blocks or bowls for a chain of {length}")
        families = sorted({o[0] for o in options}, key=TASK_FAMILIES.index)
        family = families[int(rng.integers(len(families)))]
        choices = [o for o in options if o[0] == family]
        _, obj, dest = choices[int(rng.integers(len(choices)))]
        template = int(rng.integers(len(TEMPLATES[family])))
        tasks.append(Task(family, obj, dest, template))
        state.apply(family, obj, dest)
    return Chain(seed=seed, tasks=tuple(tasks))


def chain_for_scene(scene_seed: int) -> Chain:
    """The chain planned for a scene seed (its layout and a planner seeded by it)."""
    from reconvla_core.sim.scene import sample_layout

    layout = sample_layout(scene_seed)
    rng = np.random.default_rng([int(scene_seed), 7])
    return plan_chain(int(scene_seed), layout.block_colours(), layout.bowl_colours(), rng)


def make_eval_chains(n: int = 100, seed: int = 0) -> list[Chain]:
    """The fixed, seeded evaluation set: chain ``i`` uses scene seed ``seed * 100003 + i``.

    Chains are prefix-stable (the first 10 of 100 are the 10 of ``n=10``), so numbers from
    runs with different ``n`` and the same seed compare on their common chains.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return [chain_for_scene(int(seed) * 100003 + i) for i in range(n)]
