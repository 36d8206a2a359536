"""Tasks, paraphrases, chains and the fixed evaluation set (pure Python)."""

from __future__ import annotations

import copy

import pytest

from reconvla_core.sim.scene import sample_layout
from reconvla_core.sim.tasks import (
    TASK_FAMILIES,
    TEMPLATES,
    SymbolicState,
    Task,
    make_eval_chains,
)


def test_parse_canonical_and_every_template():
    assert Task.parse("place red blue") == Task("place", "red", "blue")
    for family, templates in TEMPLATES.items():
        for index in range(len(templates)):
            dest = None if family == "pick" else "green"
            task = Task(family, "red", dest, index)
            assert Task.parse(task.instruction) == task
    assert len({len(t) for t in TEMPLATES.values()}) == 1 and len(TEMPLATES["pick"]) >= 3


@pytest.mark.parametrize(
    "text, message",
    [("juggle red", "unknown task"), ("", "empty task"), ("stack red red", "on itself"), ("place red", "destination")],
)
def test_bad_tasks_raise_clear_errors(text, message):
    with pytest.raises(ValueError, match=message):
        Task.parse(text)


def test_eval_set_is_fixed_prefix_stable_and_feasible():
    chains = make_eval_chains(30, seed=0)
    assert chains == make_eval_chains(30, seed=0)
    assert chains[:10] == make_eval_chains(10, seed=0)
    assert make_eval_chains(5, seed=1)[0] != chains[0]
    families = {t.family for c in chains for t in c.tasks}
    assert families == set(TASK_FAMILIES)
    for chain in chains:
        assert len(chain.tasks) == 5
        layout = sample_layout(chain.seed)
        state = SymbolicState(free=layout.block_colours(), bowls=layout.bowl_colours())
        for task in chain.tasks:  # each subtask feasible once the previous ones succeeded
            assert (task.family, task.obj, task.dest) in state.feasible()
            state.apply(task.family, task.obj, task.dest)
        # A pick is always followed by moving the same block.
        for first, second in zip(chain.tasks, chain.tasks[1:]):
            if first.family == "pick":
                assert second.family in ("place", "stack") and second.obj == first.obj
    assert len({t.template for c in chains for t in c.tasks}) > 1  # paraphrases are used


def test_layout_is_seeded_and_has_colours_bowls_distractors():
    a, b = sample_layout(3), sample_layout(3)
    assert a == b and a != sample_layout(4)
    kinds = [o.kind for o in a.objects]
    assert kinds.count("block") == 5 and kinds.count("bowl") == 2 and kinds.count("distractor") >= 1
    assert len(set(a.block_colours())) == 5
    state = SymbolicState(free=a.block_colours(), bowls=a.bowl_colours())
    assert copy.deepcopy(state).feasible()
