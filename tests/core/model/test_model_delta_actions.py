"""Delta action mode: tokens encode a_{t+k} - s_t for the joints; decoding returns absolute actions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from model_helpers import build_tiny, make_observation

from reconvla_core.model import ReconVLA, ReconVLAConfig


def _delta_stats(norm_stats):
    from reconvla_core.model.action_tokenizer import stats_from_bounds

    stats = {k: v for k, v in norm_stats.items() if k != "action_delta"}
    stats["action_delta"] = stats_from_bounds([-1.5] * 6 + [-0.1], [1.5] * 6 + [0.1])
    return stats


def test_config_field_validated_and_old_configs_load_as_absolute(tmp_path):
    with pytest.raises(ValueError, match="action_mode"):
        ReconVLAConfig.from_preset("tiny", action_mode="relative")
    with pytest.raises(ValueError, match="delta_action_dims"):
        ReconVLAConfig.from_preset("tiny", action_mode="delta", delta_action_dims=(7,))
    config = ReconVLAConfig.from_preset("tiny", action_mode="delta")
    assert config.relative_dims == (0, 1, 2, 3, 4, 5)  # the gripper stays absolute
    assert ReconVLAConfig.from_dict(config.to_dict()).action_mode == "delta"
    old = config.to_dict()
    del old["action_mode"], old["delta_action_dims"]
    loaded = ReconVLAConfig.from_dict(old)
    assert loaded.action_mode == "absolute" and loaded.relative_dims == ()


def test_delta_mode_needs_delta_stats(norm_stats):
    model = ReconVLA(ReconVLAConfig.from_preset("tiny", action_mode="delta", recon_target="none"))
    with pytest.raises(ValueError, match="action_delta"):
        model.set_norm_stats({k: v for k, v in norm_stats.items() if k != "action_delta"})


def test_delta_round_trip_returns_absolute_actions_within_one_bin(norm_stats):
    stats = _delta_stats(norm_stats)
    model = build_tiny(stats, recon_target="none", action_mode="delta")
    processor = model.processor
    obs = make_observation(3)
    sample = processor(**{k: obs[k] for k in ("base_image", "wrist_image", "instruction", "state", "actions")})
    k_d = model.config.action_tokens_per_chunk
    tokens = sample["input_ids"][-k_d - 1:-1].numpy()
    decoded = processor.decode_actions(tokens, state=obs["state"])
    # one bin of the delta range (joints) or of the absolute range (gripper)
    low = np.array(stats["action_delta"]["q01"][:6] + [stats["action"]["q01"][6]])
    high = np.array(stats["action_delta"]["q99"][:6] + [stats["action"]["q99"][6]])
    bin_width = (high - low) / model.config.n_bins
    assert np.all(np.abs(decoded - obs["actions"]) <= bin_width + 1e-9)
    # the tokens really encode the delta: the same chunk shifted with its state gives the same tokens
    shifted = processor(**{**{k: obs[k] for k in ("base_image", "wrist_image", "instruction")},
                           "state": obs["state"] + np.r_[np.full(6, 0.01), 0.0],
                           "actions": obs["actions"] + np.r_[np.full(6, 0.01), 0.0]})
    assert np.array_equal(shifted["input_ids"][-k_d - 1:-1].numpy(), tokens)
    with pytest.raises(ValueError, match="state"):
        processor.decode_actions(tokens)


def test_delta_checkpoint_reloads_with_identical_actions(tmp_path, norm_stats):
    model = build_tiny(_delta_stats(norm_stats), recon_target="none", action_mode="delta")
    obs = make_observation(1)
    args = (obs["base_image"], obs["wrist_image"], obs["instruction"], obs["state"])
    actions = model.predict_action(*args)
    path = model.save_pretrained(tmp_path / "ckpt")
    assert json.loads((path / "config.json").read_text())["action_mode"] == "delta"
    assert "action_delta" in json.loads((path / "norm_stats.json").read_text())
    loaded = ReconVLA.from_pretrained(path)
    assert loaded.config.action_mode == "delta"
    assert np.array_equal(loaded.predict_action(*args), actions)
    # actions are absolute: a different state moves the decoded joints by exactly that difference
    # when the tokens agree (same images and prompt but state tokens differ, so compare decode only)
    tokens = loaded.decode_action_tokens(loaded.prepare_prompt(*args)[0]).numpy()
    moved = loaded.processor.decode_actions(tokens, state=obs["state"] + 0.02)
    np.testing.assert_allclose(moved[:, :6] - actions[:, :6], 0.02, atol=1e-9)
    np.testing.assert_array_equal(moved[:, 6], actions[:, 6])


def test_old_checkpoint_without_the_field_loads_as_absolute(tmp_path, norm_stats):
    model = build_tiny(norm_stats, recon_target="none")
    obs = make_observation(2)
    args = (obs["base_image"], obs["wrist_image"], obs["instruction"], obs["state"])
    path = model.save_pretrained(tmp_path / "old")
    config = json.loads((path / "config.json").read_text())
    del config["action_mode"], config["delta_action_dims"]
    (path / "config.json").write_text(json.dumps(config))
    stats = json.loads((path / "norm_stats.json").read_text())
    stats.pop("action_delta", None)
    (path / "norm_stats.json").write_text(json.dumps(stats))
    loaded = ReconVLA.from_pretrained(path)
    assert loaded.config.action_mode == "absolute"
    assert np.array_equal(loaded.predict_action(*args), model.predict_action(*args))
