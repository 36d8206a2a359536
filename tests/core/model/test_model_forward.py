"""Forward pass, losses, gradients, parameter groups, reconstruction branch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_helpers import build_tiny, make_batch
from reconvla_core.model import ReconVLA, ReconVLAConfig
from reconvla_core.model.reconstruction import pack_latents, unpack_latents


def test_forward_returns_named_losses(tiny_model):
    out = tiny_model(make_batch(tiny_model, n=2))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.recon_loss is not None and out.action_loss is not None
    assert out.loss.item() == pytest.approx(out.action_loss.item() + out.recon_loss.item(), rel=1e-5)
    assert 0.0 <= out.action_accuracy.item() <= 1.0
    # A random model is near-uniform over the vocabulary: CE about log(vocab).
    assert abs(out.action_loss.item() - np.log(tiny_model.config.llm.vocab_size)) < 1.5


def test_reconstruction_gradient_reaches_the_llm(norm_stats):
    model = build_tiny(norm_stats, recon_target="gaze").train()
    batch = make_batch(model, n=2)
    # adaLN-Zero: at initialisation the denoiser's output ignores its condition (zero output layer,
    # zero modulation), so the gradient into h_R is exactly zero for the first two steps; training
    # the denoiser for two steps opens the path, as it does in real training.
    denoiser_opt = torch.optim.SGD(model.parameter_groups()["denoiser"], lr=0.1)
    for _ in range(2):
        model(batch).recon_loss.backward()
        denoiser_opt.step()
        model.zero_grad(set_to_none=True)
    out = model(batch)
    out.recon_loss.backward()  # only the reconstruction loss
    layer = model.llm.get_decoder().layers[0]
    for param in (layer.self_attn.q_proj.weight, layer.mlp.down_proj.weight, model.llm.get_decoder().norm.weight):
        assert param.grad is not None and param.grad.abs().sum() > 0
    assert model.projector[0].weight.grad.abs().sum() > 0  # through the image tokens
    assert model.llm.get_output_embeddings().weight.grad is None or \
        model.llm.get_output_embeddings().weight.grad.abs().sum() == 0  # the LM head is not on that path
    assert all(p.grad is None for p in model.vision.parameters())  # frozen
    assert all(p.grad is None for p in model.reconstruction.vae.parameters())  # frozen


def test_training_steps_lower_both_losses(norm_stats):
    model = build_tiny(norm_stats, seed=1, recon_target="full").train()
    batch = make_batch(model, n=4)
    params = [p for group in model.parameter_groups().values() for p in group]
    optimizer = torch.optim.AdamW(params, lr=1e-3)  # no warmup on 4 samples: 2e-3 can spike a step
    torch.manual_seed(0)
    first = model(batch)
    for _ in range(20):
        out = model(batch)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    torch.manual_seed(0)
    last = model(batch)
    assert last.action_loss < first.action_loss * 0.85
    assert last.recon_loss < first.recon_loss


def test_recon_target_none_builds_no_reconstruction(norm_stats):
    model = build_tiny(norm_stats, recon_target="none")
    assert model.reconstruction is None
    assert not any(name.startswith("reconstruction.") for name in model.state_dict())
    assert model.parameter_groups()["denoiser"] == []
    assert model.parameter_counts()["params_reconstruction"] == 0
    out = model(make_batch(model, n=2))
    assert out.recon_loss is None and torch.equal(out.loss, out.action_loss)


def test_parameter_groups_hold_only_trainable_parts(tiny_model):
    groups = tiny_model.parameter_groups()
    assert set(groups) == {"llm", "projector", "denoiser"}
    counts = {k: sum(p.numel() for p in v) for k, v in groups.items()}
    assert counts["llm"] == sum(p.numel() for p in tiny_model.llm.parameters())
    assert counts["denoiser"] == tiny_model.parameter_counts()["params_denoiser"] > 0
    vision_ids = {id(p) for p in tiny_model.vision.parameters()}
    assert not any(id(p) in vision_ids for group in groups.values() for p in group)


def test_gradient_checkpointing_passthrough(norm_stats):
    model = build_tiny(norm_stats, recon_target="none").train()
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing
    out = model(make_batch(model, n=2))
    out.loss.backward()
    assert model.llm.get_decoder().layers[0].self_attn.q_proj.weight.grad is not None


def test_denoiser_starts_as_zero_output(tiny_model):
    recon = tiny_model.reconstruction
    n, d = tiny_model.config.num_image_tokens, tiny_model.config.latent_token_dim
    eps = recon.denoiser(torch.randn(2, n, d), torch.tensor([10, 500]), torch.randn(2, n, 128))
    assert eps.shape == (2, n, d) and eps.abs().max() == 0  # adaLN-Zero + zero output layer


def test_pack_unpack_latents():
    latents = torch.randn(2, 4, 16, 16)
    tokens = pack_latents(latents, 8)
    assert tokens.shape == (2, 64, 16)
    assert torch.equal(unpack_latents(tokens, 8), latents)
    # token (0, 0) holds the top-left 2x2 latent pixels of every channel
    assert torch.equal(tokens[0, 0].view(4, 2, 2), latents[0, :, :2, :2])
    with pytest.raises(ValueError, match="2x2 packing"):
        pack_latents(torch.randn(1, 4, 14, 14), 8)


def test_vae_scaling_and_shift_come_from_its_config(tiny_model):
    vae = tiny_model.reconstruction.vae
    assert vae.scaling_factor == 0.18215 and vae.shift_factor == 0.0  # an SD-style VAE has no shift
    assert vae.latent_channels == tiny_model.config.vae.latent_channels


def test_bad_batch_raises(tiny_model):
    batch = make_batch(tiny_model, n=1)
    del batch["image_mask"]
    with pytest.raises(ValueError, match="image_mask"):
        tiny_model(batch)


def test_paper_geometry_shrunk_in_width_and_depth(norm_stats, observation):
    """384 px / patch 14 -> 27x27 grid; a 16-channel VAE at 432 px -> 54x54 latents -> 27x27x64."""
    cfg = ReconVLAConfig.from_preset(
        "paper", recon_target="gaze", num_noise_draws=2,
        vision={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
        llm={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 600},
        vae={"block_out_channels": (8, 8, 16, 16), "layers_per_block": 1, "norm_num_groups": 4},
        denoiser={"depth": 1, "width": 64, "num_heads": 4})
    torch.manual_seed(0)
    model = ReconVLA(cfg)
    model.set_norm_stats(norm_stats)
    sample = model.processor(**observation)
    assert sample["pixel_values"].shape == (3, 384, 384)
    assert sample["recon_pixel_values"].shape == (3, 432, 432)
    assert int(sample["image_mask"].sum()) == 729
    batch = model.processor.collate([sample])
    latents = model.reconstruction.vae.encode(batch["recon_pixel_values"])
    assert latents.shape == (1, 16, 54, 54)
    assert model.reconstruction.encode_target(batch["recon_pixel_values"]).shape == (1, 729, 64)
    assert model.encode_images(batch["pixel_values"]).shape == (1, 729, 64)
    out = model(batch)
    assert torch.isfinite(out.loss) and out.recon_loss is not None
    model.eval()
    actions, attention = model.predict_action(observation["base_image"], observation["wrist_image"],
                                              observation["instruction"], observation["state"],
                                              return_attention=True)
    assert actions.shape == (5, 7) and attention.shape == (27, 27)


def test_sinusoidal_action_rows_order_the_bins_and_spare_other_tokens():
    torch.manual_seed(0)
    plain = ReconVLA(ReconVLAConfig.from_preset("tiny", recon_target="none"))
    torch.manual_seed(0)
    config = ReconVLAConfig.from_preset("tiny", recon_target="none", action_embedding_init="sinusoidal")
    model = ReconVLA(config)
    first, n = config.first_action_token_id, config.n_bins
    tables = zip((model.llm.get_input_embeddings().weight, model.llm.get_output_embeddings().weight),
                 (plain.llm.get_input_embeddings().weight, plain.llm.get_output_embeddings().weight))
    for table, plain_table in tables:
        rows = torch.nn.functional.normalize(table[first:first + n].float(), dim=1)
        similarity = rows @ rows.T
        near, mid, far = (float(similarity.diagonal(k).mean()) for k in (1, 8, 128))
        assert near > 0.95 and near > mid > far  # neighbouring bins alike, distant ones not
        assert float(table[first:first + n].std()) == pytest.approx(float(table[:first].std()), rel=0.2)
        assert torch.equal(table[:first], plain_table[:first])  # text rows untouched
        random_rows = torch.nn.functional.normalize(plain_table[first:first + n].float(), dim=1)
        assert float((random_rows @ random_rows.T).diagonal(1).mean()) < 0.3  # the library's init has no order


def test_sinusoidal_init_model_round_trips_through_a_checkpoint(tmp_path, norm_stats):
    config = ReconVLAConfig.from_preset("tiny", recon_target="none", action_embedding_init="sinusoidal")
    model = ReconVLA(config)
    model.set_norm_stats(norm_stats)
    with torch.no_grad():
        model.llm.get_input_embeddings().weight.add_(0.01)  # "trained": the loaded rows must be these
    model.save_pretrained(tmp_path / "ckpt")
    loaded = ReconVLA.from_pretrained(tmp_path / "ckpt")
    assert loaded.config.action_embedding_init == "sinusoidal"
    assert torch.equal(loaded.llm.get_input_embeddings().weight, model.llm.get_input_embeddings().weight)


def test_projector_input_norm_and_fresh_projector_scale(norm_stats):
    plain = build_tiny(norm_stats, recon_target="none")
    normed = build_tiny(norm_stats, recon_target="none", projector_input_norm=True)
    assert isinstance(plain.projector_norm, torch.nn.Identity)
    assert isinstance(normed.projector_norm, torch.nn.LayerNorm)
    assert any(p is normed.projector_norm.weight for p in normed.parameter_groups()["projector"])
    pixels = torch.rand(2, 3, 112, 112) * 2 - 1
    text_norm = float(plain.llm.get_input_embeddings().weight[:256].norm(dim=-1).mean())
    for model in (plain, normed):
        with torch.no_grad():
            tokens = model.encode_images(pixels)
        # fresh image tokens start at the text embeddings' scale (not hundreds of times larger)
        assert 0.2 * text_norm < float(tokens.norm(dim=-1).mean()) < 5 * text_norm


