"""One reading of an arm (follower feedback or a leader's command), shared by every arm backend.

A module of its own so that backends (piper_sdk_backend.py) and the backend registry
(backend.py, which imports the backends it registers) both depend on it, not on each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ArmFeedback:
    """Measured arm state: 7 positions and the source's own stamp (to tell fresh from repeated)."""

    positions: np.ndarray  # (7,) rad + m
    source_stamp: float
