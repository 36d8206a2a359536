"""What the arm controller needs from an arm backend, the backend registry, and the sim backend.

Backends take and give the product's 7-vector (joint1..joint6 rad + gripper opening m). The
safety filter runs before ``send``; backends only convert units and talk to the hardware.
``ArmBackend`` lists every method ``runtime.arm_controller.ArmController`` calls.

Backends register by name (``@register_backend("name")``); arm_command's ``backend`` parameter
picks one with ``make_backend(name, params, node)``. A factory gets the node's parameters and the
node itself (only a backend made of ROS topics needs it). Registered here: ``piper_sdk``
(piper_sdk_backend.py, CAN; imported only when chosen) and ``sim`` (``SimArmBackend``, an
in-process ``reconvla_core.sim.PiperCellEnv``); the ``piper_ros`` backend is made of ROS topics,
so it lives in, and registers from, the arm_command node module. A new backend: a class with the
``ArmBackend`` methods and a registered factory, imported before the node reads its parameters.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

from reconvla_core.piper import ACTION_DIM
from reconvla_core.runtime.feedback import ArmFeedback

__all__ = ["ArmBackend", "ArmFeedback", "SimArmBackend", "backend_names", "make_backend", "register_backend"]

logger = logging.getLogger(__name__)


@runtime_checkable
class ArmBackend(Protocol):
    """The seam between the arm controller and an arm: everything ``ArmController`` calls."""

    def connect(self) -> None: ...

    def enable(self, timeout_s: float = 5.0) -> bool:
        """Enable the motors; True once the arm reports enabled within ``timeout_s``."""
        ...

    def disable(self) -> None: ...

    def send(self, positions: np.ndarray, speed_percent: int) -> None:
        """One command (7,) that already passed the safety filter."""
        ...

    def read_state(self) -> ArmFeedback | None:
        """The follower's latest feedback (None before the first); may raise on a bus error."""
        ...

    def read_leader_command(self) -> ArmFeedback | None:
        """The leader arm's latest command (teleop, operator interventions); None when there is
        no leader or it has sent nothing yet."""
        ...

    def advance(self, dt: float) -> None:
        """Called once per control period after ``send``: an in-process simulator steps its
        physics by ``dt``; hardware backends do nothing."""
        ...

    def emergency_stop(self) -> None: ...

    def close(self) -> None: ...


BACKEND_METHODS = ("connect", "enable", "disable", "send", "read_state", "read_leader_command", "advance",
                   "emergency_stop", "close")


def missing_backend_methods(backend: object) -> list[str]:
    """The ArmBackend methods ``backend`` lacks (empty when it is a complete backend)."""
    return [name for name in BACKEND_METHODS if not callable(getattr(backend, name, None))]


BackendFactory = Callable[[Mapping[str, Any], Any], ArmBackend]
_BACKENDS: dict[str, BackendFactory] = {}


def register_backend(name: str) -> Callable[[BackendFactory], BackendFactory]:
    """Decorator: ``factory(params, node) -> ArmBackend`` becomes arm_command's backend ``name``."""

    def decorate(factory: BackendFactory) -> BackendFactory:
        _BACKENDS[name] = factory
        return factory

    return decorate


def backend_names() -> tuple[str, ...]:
    """The registered backend names, in registration order."""
    return tuple(_BACKENDS)


def make_backend(name: str, params: Mapping[str, Any], node: Any = None) -> ArmBackend:
    """Build the backend registered as ``name`` (ValueError naming the choices when unknown)."""
    try:
        factory = _BACKENDS[name]
    except KeyError:
        raise ValueError(f"backend must be one of {backend_names()}, got {name!r}") from None
    return factory(params, node)


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
        if self._env is None:
            return  # not connected yet
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

    def read_leader_command(self) -> ArmFeedback | None:
        return None  # no leader arm in the in-process twin

    def emergency_stop(self) -> None:
        """Freeze the simulated arm where it is."""
        if self._state is not None and self._env is not None:
            self._env.apply_command(self._state.copy())
        self._enabled = False

    def close(self) -> None:
        close = getattr(self._env, "close", None)
        if callable(close):
            close()


@register_backend("piper_sdk")
def _piper_sdk_backend(params: Mapping[str, Any], node: Any = None) -> ArmBackend:
    from reconvla_core.runtime.piper_sdk_backend import PiperSdkBackend  # piper_sdk loads in connect()

    return PiperSdkBackend(str(params["can_port"]), gripper_effort=int(params["gripper_effort"]),
                           cut_power_on_disable=bool(params["disable_cuts_power"]),
                           speed_percent=int(params["speed_percent"]))


@register_backend("sim")
def _sim_backend(params: Mapping[str, Any], node: Any = None) -> ArmBackend:
    return SimArmBackend(seed=int(params["sim_seed"]))
