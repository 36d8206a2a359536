"""predict_action, the fast decoder against a slow reference, attention maps, gaze sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_helpers import build_tiny, make_observation, reference_constrained_greedy


@pytest.fixture(scope="module")
def model(norm_stats):
    return build_tiny(norm_stats, seed=3, recon_target="none")


def test_predict_action_shape_and_units(model, norm_stats):
    obs = make_observation(1, base_shape=(480, 640), wrist_shape=(100, 90))
    actions = model.predict_action(obs["base_image"], obs["wrist_image"], obs["instruction"], obs["state"])
    assert isinstance(actions, np.ndarray) and actions.shape == (5, 7)
    stats = norm_stats["action"]
    assert np.all(actions >= np.array(stats["q01"]) - 1e-9) and np.all(actions <= np.array(stats["q99"]) + 1e-9)


def test_decoder_matches_the_reference_greedy(model):
    for seed in range(2):
        obs = make_observation(seed)
        embeds, _ = model.prepare_prompt(obs["base_image"], obs["wrist_image"], obs["instruction"], obs["state"])
        fast = model.decode_action_tokens(embeds).tolist()
        assert fast == reference_constrained_greedy(model, embeds)


def test_decoder_serves_longer_prompts_and_weight_updates(norm_stats):
    model = build_tiny(norm_stats, seed=4, recon_target="none")
    obs = make_observation(0)
    embeds, _ = model.prepare_prompt(obs["base_image"], obs["wrist_image"], obs["instruction"], obs["state"])
    model.decode_action_tokens(embeds)
    with torch.no_grad():  # an optimiser step changes weights in place: the decoder must notice
        for layer in model.llm.get_decoder().layers:
            layer.mlp.down_proj.weight.mul_(3.0)
            layer.self_attn.q_proj.weight.mul_(2.0)
    longer = obs["instruction"] + " very carefully, avoiding the green cup on the left side of the table" * 3
    embeds, _ = model.prepare_prompt(obs["base_image"], obs["wrist_image"], longer, obs["state"])
    assert model.decode_action_tokens(embeds).tolist() == reference_constrained_greedy(model, embeds)


def test_decoder_with_lora_wrapped_llm(norm_stats):
    from peft import LoraConfig, get_peft_model

    model = build_tiny(norm_stats, seed=5, recon_target="none")
    model.llm = get_peft_model(model.llm, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                     init_lora_weights=False))
    obs = make_observation(2)
    embeds, _ = model.prepare_prompt(obs["base_image"], obs["wrist_image"], obs["instruction"], obs["state"])
    assert model.decode_action_tokens(embeds).tolist() == reference_constrained_greedy(model, embeds)


def test_prestitched_frame_gives_the_same_actions(model):
    obs = make_observation(3)
    direct = model.predict_action(obs["base_image"], obs["wrist_image"], obs["instruction"], obs["state"])
    frame = model.processor.stitch(obs["base_image"], obs["wrist_image"])
    assert frame.dtype == np.uint8 and frame.shape == (112, 112, 3)
    stitched = model.predict_action(None, None, obs["instruction"], obs["state"], stitched_image=frame)
    assert np.array_equal(direct, stitched)


def test_attention_map(model):
    obs = make_observation(4)
    plain = model.predict_action(obs["base_image"], obs["wrist_image"], obs["instruction"], obs["state"])
    actions, attention = model.predict_action(obs["base_image"], obs["wrist_image"], obs["instruction"],
                                              obs["state"], return_attention=True)
    assert np.array_equal(actions, plain)  # asking for attention does not change the actions
    grid = model.config.grid_size
    assert attention.shape == (grid, grid) and np.all(attention >= 0)
    assert attention.sum() == pytest.approx(1.0, abs=1e-4)  # each query renormalised over image tokens
    assert model.llm.config._attn_implementation == "sdpa"  # restored after the eager pass


def test_attention_layers_are_configurable(norm_stats):
    last = build_tiny(norm_stats, seed=3, recon_target="none", attention_layers=(-1,))
    first = build_tiny(norm_stats, seed=3, recon_target="none", attention_layers=(0,))
    obs = make_observation(4)
    args = (obs["base_image"], obs["wrist_image"], obs["instruction"], obs["state"])
    a_last, map_last = last.predict_action(*args, return_attention=True)
    a_first, map_first = first.predict_action(*args, return_attention=True)
    assert np.array_equal(a_last, a_first) and not np.allclose(map_last, map_first)


def test_predict_action_bad_inputs(model):
    obs = make_observation(0)
    with pytest.raises(ValueError, match="stitched_image"):
        model.predict_action(None, None, obs["instruction"], obs["state"])
    with pytest.raises(ValueError, match="state"):
        model.predict_action(obs["base_image"], obs["wrist_image"], obs["instruction"], np.zeros(3))
    with pytest.raises(ValueError, match="uint8"):
        model.predict_action(obs["base_image"].astype(np.float32), obs["wrist_image"], obs["instruction"],
                             obs["state"])


def test_sample_gaze_image(tiny_model):
    obs = make_observation(5)
    image = tiny_model.sample_gaze_image(obs["base_image"], obs["wrist_image"], obs["instruction"], obs["state"],
                                         num_steps=3)
    size = tiny_model.config.vae.image_size
    assert image.shape == (size, size, 3) and image.dtype == np.uint8


def test_sample_gaze_image_needs_the_branch(model):
    obs = make_observation(5)
    with pytest.raises(ValueError, match="load_reconstruction=True"):
        model.sample_gaze_image(obs["base_image"], obs["wrist_image"], obs["instruction"], obs["state"])


def test_fixed_shape_step_matches_the_reference(model):
    """The masked, fixed-shape step that a CUDA graph captures, run eagerly on the CPU."""
    from reconvla_core.model.decoding import ActionDecoder

    cfg = model.config
    obs = make_observation(6)
    embeds, _ = model.prepare_prompt(obs["base_image"], obs["wrist_image"], obs["instruction"], obs["state"])
    decoder = ActionDecoder(model.llm, cfg.first_action_token_id, cfg.n_bins, cfg.action_tokens_per_chunk,
                            capacity=embeds.shape[1] + 50, use_cuda_graph=False, fixed_shapes=True)
    assert decoder(embeds).tolist() == reference_constrained_greedy(model, embeds)


def test_answer_box_starts_the_answer_and_the_actions_follow(norm_stats):
    model = build_tiny(norm_stats, seed=6, recon_target="none", answer_box=True)
    obs = make_observation(0)
    processor = model.processor
    sample = processor(**{k: obs[k] for k in ("base_image", "wrist_image", "instruction", "state", "actions",
                                              "gaze_box")})
    labelled = sample["input_ids"][sample["labels"] != -100].numpy()
    assert len(labelled) == 4 + 35 + 1  # box, actions, EOS
    box = processor.decode_box(labelled[:-1])
    np.testing.assert_allclose(box, obs["gaze_box"], atol=1 / 256)  # within one bin of [0, 1]
    plain = build_tiny(norm_stats, seed=6, recon_target="none").processor
    expected = plain.decode_actions(plain(**{k: obs[k] for k in ("base_image", "wrist_image", "instruction",
                                                                  "state", "actions")})["input_ids"][-36:-1])
    np.testing.assert_allclose(processor.decode_actions(labelled[:-1]), expected)
    no_box = processor(**{k: obs[k] for k in ("base_image", "wrist_image", "instruction", "state", "actions")},
                       gaze_valid=False)
    whole = processor.decode_box(no_box["input_ids"][no_box["labels"] != -100].numpy()[:-1])
    np.testing.assert_allclose(whole, [0, 0, 1, 1], atol=1 / 256)  # no gaze box: the whole view
    with pytest.raises(ValueError, match="expected 39 answer tokens"):
        processor.decode_actions(labelled[4:-1])

    embeds, _ = model.prepare_prompt(obs["base_image"], obs["wrist_image"], obs["instruction"], obs["state"])
    tokens = model.decode_action_tokens(embeds)
    assert tokens.tolist() == reference_constrained_greedy(model, embeds) and len(tokens) == 39
    actions, attention = model.predict_action(obs["base_image"], obs["wrist_image"], obs["instruction"],
                                              obs["state"], return_attention=True)
    assert actions.shape == (5, 7) and attention.shape == (8, 8)
