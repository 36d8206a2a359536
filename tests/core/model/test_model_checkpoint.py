"""Checkpoints (save/load, inference loads, errors naming files) and HF-layout backbones."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from model_helpers import build_tiny, make_observation
from reconvla_core.model import ReconVLA, ReconVLAConfig
from reconvla_core.model.checkpoint import (
    RECON_FILE,
    STATS_FILE,
    WEIGHTS_FILE,
    CheckpointError,
)


def _actions(model, seed=0):
    obs = make_observation(seed)
    return model.predict_action(obs["base_image"], obs["wrist_image"], obs["instruction"], obs["state"])


@pytest.fixture(scope="module")
def saved(tmp_path_factory, norm_stats):
    model = build_tiny(norm_stats, seed=7, recon_target="gaze")
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    model.save_pretrained(path, metadata={"step": 12})
    return model, path


def test_checkpoint_layout(saved):
    _, path = saved
    names = {p.name for p in path.iterdir()}
    assert {"config.json", WEIGHTS_FILE, RECON_FILE, STATS_FILE, "tokenizer", "metadata.json"} <= names
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["step"] == 12 and meta["has_reconstruction"] and meta["recon_target"] == "gaze"
    assert json.loads((path / "config.json").read_text())["model_type"] == "reconvla"


def test_round_trip_gives_identical_actions(saved):
    model, path = saved
    loaded = ReconVLA.from_pretrained(path)
    for seed in range(2):
        assert np.array_equal(_actions(model, seed), _actions(loaded, seed))
    assert loaded.norm_stats == model.norm_stats
    assert loaded.config == model.config


def test_inference_load_reads_no_reconstruction_weights(saved, tmp_path):
    model, path = saved
    copy = tmp_path / "copy"
    copy.mkdir()
    for item in path.iterdir():
        if item.is_dir():
            (copy / item.name).mkdir()
            for sub in item.iterdir():
                (copy / item.name / sub.name).write_bytes(sub.read_bytes())
        else:
            (copy / item.name).write_bytes(item.read_bytes())
    (copy / RECON_FILE).write_bytes(b"garbage, never read by an inference load")
    loaded = ReconVLA.from_pretrained(copy, load_reconstruction=False)
    assert loaded.reconstruction is None
    assert np.array_equal(_actions(model), _actions(loaded))
    with pytest.raises(CheckpointError, match=RECON_FILE):
        ReconVLA.from_pretrained(copy, load_reconstruction=True)


def test_training_load_restores_the_reconstruction_branch(saved):
    model, path = saved
    loaded = ReconVLA.from_pretrained(path, load_reconstruction=True)
    for name, tensor in model.reconstruction.state_dict().items():
        assert torch.equal(tensor, loaded.reconstruction.state_dict()[name]), name


@pytest.mark.parametrize("victim, damage, error", [
    (WEIGHTS_FILE, "delete", FileNotFoundError),
    (WEIGHTS_FILE, "truncate", CheckpointError),
    (STATS_FILE, "delete", FileNotFoundError),
    (STATS_FILE, "truncate", CheckpointError),
    ("config.json", "truncate", CheckpointError),
    ("config.json", "delete", FileNotFoundError),
])
def test_missing_or_corrupt_files_are_named(norm_stats, tmp_path, victim, damage, error):
    model = build_tiny(norm_stats, recon_target="none")
    path = model.save_pretrained(tmp_path / "ckpt")
    target = path / victim
    if damage == "delete":
        target.unlink()
    else:
        target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])
    with pytest.raises(error, match=victim):
        ReconVLA.from_pretrained(path)


def test_weights_that_do_not_fit_the_config(norm_stats, tmp_path):
    model = build_tiny(norm_stats, recon_target="none")
    path = model.save_pretrained(tmp_path / "ckpt")
    config = json.loads((path / "config.json").read_text())
    config["llm"]["num_hidden_layers"] = 2
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=WEIGHTS_FILE):
        ReconVLA.from_pretrained(path)


def _tiny_hf_parts(tmp_path):
    """A Qwen2 LLM, a SigLIP vision tower and a VAE saved with the libraries' own save_pretrained."""
    from diffusers import AutoencoderKL
    from reconvla_core.model.tokenization import build_byte_tokenizer
    from transformers import (
        Qwen2Config,
        Qwen2ForCausalLM,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    torch.manual_seed(11)
    llm = Qwen2ForCausalLM(Qwen2Config(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, vocab_size=600,
                                       rope_theta=1e4, tie_word_embeddings=False))
    vision = SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                                  num_attention_heads=2, image_size=112, patch_size=14))
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        block_out_channels=(8, 8, 16), latent_channels=4, norm_num_groups=4,
                        scaling_factor=0.5, shift_factor=0.1)
    llm.save_pretrained(tmp_path / "qwen2")
    build_byte_tokenizer().save_pretrained(tmp_path / "qwen2")  # stands in for Qwen2's own tokenizer files
    vision.save_pretrained(tmp_path / "siglip")
    vae.save_pretrained(tmp_path / "vae")
    return llm, vision, vae


def test_backbones_from_qwen2_and_siglip_directories(tmp_path, norm_stats):
    llm, vision, _ = _tiny_hf_parts(tmp_path)
    model = ReconVLA.from_backbones(ReconVLAConfig.from_preset("tiny", recon_target="gaze"),
                                    llm_path=tmp_path / "qwen2", vision_path=tmp_path / "siglip",
                                    vae_path=tmp_path / "vae")
    assert model.config.llm.hidden_size == 64 and model.config.vision.num_hidden_layers == 3
    assert torch.equal(model.llm.get_input_embeddings().weight, llm.get_input_embeddings().weight)
    assert torch.equal(model.llm.lm_head.weight, llm.lm_head.weight)
    kept = model.config.vision.num_layers_kept
    assert kept == 2 and len(model.vision.encoder.layers) == 2  # penultimate layer: the last one is dropped
    assert torch.equal(model.vision.encoder.layers[1].mlp.fc1.weight, vision.encoder.layers[1].mlp.fc1.weight)
    recon = model.reconstruction
    assert recon.vae.scaling_factor == 0.5 and recon.vae.shift_factor == pytest.approx(0.1)
    assert model.config.vae.shift_factor == pytest.approx(0.1)
    # features = the output of the penultimate layer of the original tower
    pixels = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        expected = vision(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        got = model.vision(pixel_values=pixels, output_hidden_states=True).hidden_states[-1]
    assert torch.allclose(expected, got, atol=1e-6)
    model.set_norm_stats(norm_stats)
    out = model.train()(
        model.processor.collate([model.processor(**make_observation(0))]))
    assert torch.isfinite(out.loss) and out.recon_loss is not None


def test_backbones_from_a_llava_directory(tmp_path, norm_stats):
    from transformers import (
        LlavaConfig,
        LlavaForConditionalGeneration,
        Qwen2Config,
        SiglipVisionConfig,
    )

    torch.manual_seed(12)
    llava = LlavaForConditionalGeneration(LlavaConfig(
        vision_config=SiglipVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                         num_attention_heads=2, image_size=112, patch_size=14),
        text_config=Qwen2Config(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, vocab_size=600, tie_word_embeddings=False),
        image_token_index=270, vision_feature_layer=-2, tie_word_embeddings=False))
    llava.save_pretrained(tmp_path / "llava")
    config = ReconVLAConfig.from_preset("tiny", recon_target="none")
    model = ReconVLA.from_pretrained(tmp_path / "llava", config=config)
    projector = llava.model.multi_modal_projector
    assert torch.equal(model.projector[0].weight, projector.linear_1.weight)
    assert torch.equal(model.projector[2].bias, projector.linear_2.bias)
    assert torch.equal(model.llm.get_decoder().layers[1].mlp.up_proj.weight,
                       llava.model.language_model.layers[1].mlp.up_proj.weight)
    assert torch.equal(model.llm.lm_head.weight, llava.lm_head.weight)
    model.set_norm_stats(norm_stats)
    assert _actions(model).shape == (5, 7)
    # and our own checkpoint of it round-trips
    path = model.save_pretrained(tmp_path / "ours")
    assert np.array_equal(_actions(ReconVLA.from_pretrained(path)), _actions(model))


def test_backbone_errors(tmp_path):
    config = ReconVLAConfig.from_preset("tiny")
    with pytest.raises(ValueError, match="llava_path"):
        ReconVLA.from_backbones(config)
    with pytest.raises(FileNotFoundError, match="config.json"):
        ReconVLA.from_backbones(config, llm_path=tmp_path, vision_path=tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ReconVLA.from_pretrained(tmp_path / "nowhere")


def test_vision_tower_from_a_full_siglip_directory(tmp_path):
    """google/siglip-so400m-patch14-384 is a SiglipModel (text + vision): its vision half is used."""
    from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipConfig, SiglipModel

    torch.manual_seed(13)
    siglip = SiglipModel(SiglipConfig(
        text_config={"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "vocab_size": 100},
        vision_config={"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 3,
                       "num_attention_heads": 2, "image_size": 112, "patch_size": 14}))
    siglip.save_pretrained(tmp_path / "siglip")
    Qwen2ForCausalLM(Qwen2Config(hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
                                 num_key_value_heads=2, vocab_size=600)).save_pretrained(tmp_path / "qwen2")
    model = ReconVLA.from_backbones(ReconVLAConfig.from_preset("tiny", recon_target="none"),
                                    llm_path=tmp_path / "qwen2", vision_path=tmp_path / "siglip")
    assert torch.equal(model.vision.encoder.layers[0].self_attn.q_proj.weight,
                       siglip.vision_model.encoder.layers[0].self_attn.q_proj.weight)


def test_loaded_config_records_where_the_weights_came_from(tmp_path, caplog):
    _tiny_hf_parts(tmp_path)
    with caplog.at_level("WARNING"):
        model = ReconVLA.from_backbones(ReconVLAConfig.from_preset("tiny", recon_target="none"),
                                        llm_path=tmp_path / "qwen2", vision_path=tmp_path / "siglip")
    assert model.config.llm_path == str(tmp_path / "qwen2") and model.processor.config is model.config
    assert "builds random weights" not in caplog.text
    with caplog.at_level("WARNING"):
        ReconVLA(model.config)  # a config naming weight dirs, built randomly: the user is told
    assert "builds random weights" in caplog.text
