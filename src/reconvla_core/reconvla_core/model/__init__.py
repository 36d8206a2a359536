"""ReconVLA model: config, processor, network, reconstruction branch, checkpoints.

``from reconvla_core.model import ReconVLA, ReconVLAConfig``. The config imports no torch;
the network (torch, transformers) loads on first use and diffusers only when the
reconstruction branch is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from reconvla_core.model.configuration_reconvla import ReconVLAConfig

if TYPE_CHECKING:
    from reconvla_core.model.modeling_reconvla import ReconVLA, ReconVLAOutput
    from reconvla_core.model.processing_reconvla import ReconVLAProcessor

__all__ = ["ReconVLA", "ReconVLAConfig", "ReconVLAOutput", "ReconVLAProcessor"]

_LAZY = {
    "ReconVLA": "reconvla_core.model.modeling_reconvla",
    "ReconVLAOutput": "reconvla_core.model.modeling_reconvla",
    "ReconVLAProcessor": "reconvla_core.model.processing_reconvla",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'reconvla_core.model' has no attribute {name!r}")
