"""Helpers shared by the model tests (synthetic observations, tiny models, reference decoding)."""

from __future__ import annotations

import numpy as np

INSTRUCTION = "put the red block in the blue bowl"


def make_observation(seed: int = 0, base_shape=(240, 320), wrist_shape=(200, 260)) -> dict:
    from reconvla_core import piper

    rng = np.random.default_rng(seed)
    low = np.array(piper.JOINT_LOWER + (piper.GRIPPER_MIN,))
    high = np.array(piper.JOINT_UPPER + (piper.GRIPPER_MAX,))
    state = low + (high - low) * rng.uniform(0.2, 0.8, size=7)
    actions = np.clip(state + (high - low) * 0.05 * rng.normal(size=(5, 7)), low, high)
    return {"base_image": rng.integers(0, 256, (*base_shape, 3), dtype=np.uint8),
            "wrist_image": rng.integers(0, 256, (*wrist_shape, 3), dtype=np.uint8),
            "instruction": INSTRUCTION, "state": state, "actions": actions,
            "gaze_box": np.array([0.2, 0.3, 0.6, 0.8])}


def build_tiny(norm_stats: dict, seed: int = 0, **overrides):
    import torch
    from reconvla_core.model import ReconVLA, ReconVLAConfig

    torch.manual_seed(seed)
    model = ReconVLA(ReconVLAConfig.from_preset("tiny", **overrides))
    model.set_norm_stats(norm_stats)
    return model.eval()


def make_batch(model, n: int = 2, seed: int = 0) -> dict:
    samples = []
    for i in range(n):
        obs = make_observation(seed + i)
        samples.append(model.processor(base_image=obs["base_image"], wrist_image=obs["wrist_image"],
                                       instruction=obs["instruction"] + " now" * i, state=obs["state"],
                                       actions=obs["actions"], gaze_box=obs["gaze_box"]))
    return model.processor.collate(samples)


def reference_constrained_greedy(model, prompt_embeds):
    """Slow reference: a full forward per token, logits restricted to the action ids, argmax."""
    import torch

    cfg = model.config
    first, n_bins = cfg.first_action_token_id, cfg.n_bins
    embedding = model.llm.get_input_embeddings().weight
    sequence = prompt_embeds
    tokens = []
    with torch.inference_mode():
        for _ in range(cfg.answer_tokens_per_chunk):
            hidden = model.llm.get_decoder()(inputs_embeds=sequence, use_cache=False).last_hidden_state[:, -1]
            logits = model.llm.get_output_embeddings()(hidden)[:, first:first + n_bins]
            token = first + int(logits.argmax(-1))
            tokens.append(token)
            sequence = torch.cat([sequence, embedding[token].view(1, 1, -1)], dim=1)
    return tokens
