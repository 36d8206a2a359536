"""The checkpoint shipped with the package: a tiny ReconVLA trained in the simulation twin.

``reconvla demo`` finetunes it on the demonstrations it has just recorded (the paper's pretrain ->
finetune, in miniature), ``reconvla demo --pretrained`` and ``sim.launch.py`` deploy it as is.
How it was made (data, commands, training curve): ``reconvla_core/pretrained/tiny-sim/README.md``.
"""

from __future__ import annotations

from pathlib import Path

SHIPPED_CHECKPOINT = Path(__file__).resolve().parent.parent / "pretrained" / "tiny-sim"


def shipped_checkpoint() -> Path:
    """The shipped checkpoint directory; ``FileNotFoundError`` with the way out when it is absent."""
    if not (SHIPPED_CHECKPOINT / "config.json").is_file():
        raise FileNotFoundError(
            f"the shipped checkpoint {SHIPPED_CHECKPOINT} is missing (an incomplete install?); reinstall "
            "reconvla_core, pass a checkpoint of your own, or train from random weights (`reconvla demo "
            "--from-scratch`)")
    return SHIPPED_CHECKPOINT
