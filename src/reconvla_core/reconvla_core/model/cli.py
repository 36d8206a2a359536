"""`reconvla model info`: sizes of a preset or a checkpoint (torch loads inside the command only)."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from reconvla_core.model.configuration_reconvla import ACTION_HEADS, PRESETS, RECON_TARGETS

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    model = subparsers.add_parser("model", help="inspect the ReconVLA model")
    model_sub = model.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)
    info = model_sub.add_parser("info", help="parameter counts, image tokens, action tokens per chunk")
    source = info.add_mutually_exclusive_group()
    source.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="model preset (default tiny)")
    source.add_argument("--checkpoint", help="a ReconVLA checkpoint directory (reads its config.json only)")
    info.add_argument("--recon-target", choices=RECON_TARGETS, default=None,
                      help="reconstruction target (default: the preset's / checkpoint's)")
    info.add_argument("--chunk-size", type=int, default=None, help="actions per chunk K")
    info.add_argument("--action-head", choices=ACTION_HEADS, default=None,
                      help="tokens (the paper's) or parallel (OpenVLA-OFT: one pass per chunk)")
    info.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    info.set_defaults(func=_info)


def model_info(config: Any) -> dict[str, Any]:
    """Parameter counts without allocating weights (the model is built on the meta device)."""
    from accelerate import init_empty_weights

    from reconvla_core.model.modeling_reconvla import ReconVLA

    with init_empty_weights(include_buffers=False):
        model = ReconVLA(config)
    counts = model.parameter_counts()
    return {
        "preset": config.preset,
        "recon_target": config.recon_target,
        **counts,
        "image_tokens": config.num_image_tokens,
        "grid_size": config.grid_size,
        "action_head": config.action_head,
        # Decoder passes per chunk after the prompt: one per answer token, or one for the whole chunk.
        "decoder_passes_per_chunk": 1 if config.action_head == "parallel" else config.answer_tokens_per_chunk,
        "action_tokens_per_chunk": config.action_tokens_per_chunk,
        "answer_tokens_per_chunk": config.answer_tokens_per_chunk,
        "chunk_size": config.chunk_size,
        "action_dim": config.action_dim,
        "latent_token_dim": config.latent_token_dim,
        "vae_image_size": config.vae.image_size,
        "vision_image_size": config.vision.image_size,
    }


def _info(args: argparse.Namespace) -> int:
    from reconvla_core.cli.main import emit_result
    from reconvla_core.model.configuration_reconvla import ReconVLAConfig

    overrides: dict[str, Any] = {}
    if args.recon_target is not None:
        overrides["recon_target"] = args.recon_target
    if args.chunk_size is not None:
        overrides["chunk_size"] = args.chunk_size
    if args.action_head is not None:
        overrides["action_head"] = args.action_head
    if args.checkpoint:
        from pathlib import Path

        from reconvla_core.model.checkpoint import CONFIG_FILE, _read_json

        config_file = Path(args.checkpoint) / CONFIG_FILE
        if not config_file.is_file():
            raise FileNotFoundError(f"{config_file} is missing: not a ReconVLA checkpoint")
        config = ReconVLAConfig.from_dict(_read_json(config_file)).replace(**overrides)
    else:
        config = ReconVLAConfig.from_preset(args.preset, **overrides)
    result = model_info(config)
    logger.debug("model info: %s", json.dumps(result))
    emit_result(result, args.json)
    return 0
