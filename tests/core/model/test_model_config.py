"""ReconVLAConfig: presets, derived sizes, overrides, validation, light import."""

from __future__ import annotations

import subprocess
import sys

import pytest
from reconvla_core.model import ReconVLAConfig


def test_paper_preset_geometry():
    cfg = ReconVLAConfig.from_preset("paper")
    assert (cfg.vision.image_size, cfg.vision.patch_size, cfg.grid_size) == (384, 14, 27)
    assert cfg.num_image_tokens == 729
    assert (cfg.vision.hidden_size, cfg.llm.hidden_size) == (1152, 3584)
    assert cfg.llm.num_hidden_layers == 28 and cfg.llm.vocab_size == 152064
    assert cfg.vae.latent_channels == 16 and cfg.vae.latent_size == 54 and cfg.latent_token_dim == 64
    assert (cfg.vae.scaling_factor, cfg.vae.shift_factor) == (0.3611, 0.1159)
    assert (cfg.denoiser.depth, cfg.denoiser.width, cfg.denoiser.num_heads) == (3, 1024, 16)
    assert cfg.action_tokens_per_chunk == 35 and cfg.first_action_token_id == 152064 - 256
    assert cfg.num_noise_draws == 4 and cfg.recon_weight == 1.0 and cfg.num_train_timesteps == 1000


def test_tiny_preset_is_consistent():
    cfg = ReconVLAConfig.from_preset("tiny")
    assert cfg.vae.latent_size == 2 * cfg.grid_size
    assert cfg.llm.hidden_size < 512 and cfg.num_image_tokens == 64


def test_overrides_and_round_trip():
    cfg = ReconVLAConfig.from_preset("tiny", recon_target="none", chunk_size=3, llm={"num_hidden_layers": 2})
    assert cfg.chunk_size == 3 and cfg.llm.num_hidden_layers == 2 and cfg.llm.hidden_size == 128
    again = ReconVLAConfig.from_dict(cfg.to_dict())
    assert again == cfg


@pytest.mark.parametrize("overrides, field", [
    ({"recon_target": "bogus"}, "recon_target"),
    ({"chunk_size": 0}, "chunk_size"),
    ({"action_dim_modes": ("normalize",)}, "action_dim_modes"),
    ({"vae": {"image_size": 128}}, "vae.image_size"),
    ({"colour": 3}, "colour"),
    ({"llm": {"num_attention_heads": 3}}, "llm.hidden_size"),
    ({"action_token_offset": 400}, "action tokens"),
    ({"action_embedding_init": "zeros"}, "action_embedding_init"),
])
def test_bad_values_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=field.split(".")[0]):
        ReconVLAConfig.from_preset("tiny", **overrides)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset"):
        ReconVLAConfig.from_preset("huge")


def test_import_is_light():
    code = ("import sys, reconvla_core.model; from reconvla_core.model import ReconVLAConfig; "
            "ReconVLAConfig.from_preset('paper'); "
            "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_inference_model_does_not_import_diffusers():
    code = ("import sys; from reconvla_core.model import ReconVLA, ReconVLAConfig; "
            "m = ReconVLA(ReconVLAConfig.from_preset('tiny', recon_target='none')); "
            "assert m.reconstruction is None and 'diffusers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                                                                   "PATH": ""})


def test_every_field_is_documented_once_with_its_default():
    """The class docstring is the one place the fields are explained (Args-style); a new field needs
    an entry, and a default it states in backticks must be the field's."""
    import dataclasses
    import re

    doc = ReconVLAConfig.__doc__
    entries = re.findall(r"^        ([a-z_][a-z0-9_, ]*) \(`([^`]*)`(?:, (?:\*optional\*|defaults to ([^)\n]*)))?\):$",
                         doc, re.M)
    documented = [name.strip() for names, _, _ in entries for name in names.split(",")]
    fields = {f.name: f for f in dataclasses.fields(ReconVLAConfig)}
    assert sorted(documented) == sorted(fields), set(documented) ^ set(fields)  # each field exactly once
    checked = 0
    for names, _, default in entries:
        stated = re.fullmatch(r"`(.*)`", default or "")
        if stated:  # e.g. defaults to `0.0`, `"random"`, `14 / 27`
            for name in names.split(","):
                assert eval(stated.group(1)) == fields[name.strip()].default, name  # noqa: S307 (literal)
                checked += 1
    assert checked >= 20
    experimental = doc.split("Experimental / training-from-scratch options:")[1]
    for name in ("train_vision", "projector_input_norm", "action_embedding_init", "answer_box", "vision_film",
                 "spatial_keypoints", "gaze_keypoint_weight", "action_head_state"):
        assert f"\n        {name} (" in experimental, name
