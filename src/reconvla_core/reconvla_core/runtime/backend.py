"""What arm_command needs from an arm backend, and the in-process simulator backend.

Backends take and give the product's 7-vector (joint1..joint6 rad + gripper opening m). The
safety filter runs before ``send``; backends only convert units and talk to the hardware.
Implementations: ``PiperSdkBackend`` (piper_sdk_backend.py, CAN), ``SimArmBackend`` (here, an
in-process ``reconvla_core.sim.PiperCellEnv``) and the piper_ros topic backend, which lives in
the arm_command node because it is made of ROS topics.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from reconvla_core.piper import ACTION_DIM

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArmFeedback:
    """Measured arm state: 7 positions and the source's own stamp (to tell fresh from repeated)."""

    positions: np.ndarray  # (7,) rad + m
    source_stamp: float


@runtime_checkable
class ArmBackend(Protocol):
    """The seam between arm_command and an arm."""

    def connect(self) -> None: ...

    def enable(self, timeout_s: float = 5.0) -> bool: ...

    def disable(self) -> None: ...

    def send(self, positions: np.ndarray, speed_percent: int) -> None: ...

    def read_state(self) -> ArmFeedback | None: ...

    def emergency_stop(self) -> None: ...

    def close(self) -> None: ...


class SimArmBackend:
    """Drives an in-process simulator (``reconvla_core.sim.PiperCellEnv`` or anything with its API).

    ``send`` applies the command; ``advance(dt)`` steps the physics (called once per control
    tick by arm_command); ``read_state`` returns the simulated joint state.
    """

    def __init__(self, env: Any | None = None, sim_config: Any | None = None, seed: int = 0) -> None:
        self._env = env
        self._sim_config = sim_config
        self._seed = seed
        self._time = 0.0
        self._enabled = False
        self._state: np.ndarray | None = None

    @property
    def env(self) -> Any:
        return self._env

    def connect(self) -> None:
        if self._env is None:
            from reconvla_core.sim import PiperCellEnv, SimConfig  # pybullet loads only here

            self._env = PiperCellEnv(self._sim_config or SimConfig())
        obs = self._env.reset(seed=self._seed)
        self._state = np.asarray(obs["state"], dtype=np.float64).reshape(ACTION_DIM)

    def enable(self, timeout_s: float = 5.0) -> bool:
        self._enabled = True
        return True

    def disable(self) -> None:
        self._enabled = False

    def send(self, positions: np.ndarray, speed_percent: int) -> None:
        if not self._enabled:
            raise RuntimeError("SimArmBackend.send while disabled")
        self._env.apply_command(np.asarray(positions, dtype=np.float64))

    def advance(self, dt: float) -> None:
        """Step the simulation by ``dt`` seconds and refresh the measured state."""
        self._env.advance(dt)
        self._time += dt
        self._state = np.asarray(self._read_env_state(), dtype=np.float64).reshape(ACTION_DIM)

    def _read_env_state(self) -> np.ndarray:
        state = getattr(self._env, "state", None)
        if callable(state):
            return state()  # cheap path when the env offers it (no rendering)
        return self._env.observe()["state"]

    def read_state(self) -> ArmFeedback | None:
        if self._state is None:
            return None
        return ArmFeedback(self._state.copy(), self._time)

    def emergency_stop(self) -> None:
        """Freeze the simulated arm where it is."""
        if self._state is not None and self._env is not None:
            self._env.apply_command(self._state.copy())
        self._enabled = False

    def close(self) -> None:
        close = getattr(self._env, "close", None)
        if callable(close):
            close()
