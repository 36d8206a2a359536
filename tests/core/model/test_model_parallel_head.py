"""The parallel continuous action head (OpenVLA-OFT style) and instruction FiLM of the vision tower."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_helpers import build_tiny, make_batch, make_observation
from reconvla_core.model import ReconVLA, ReconVLAConfig
from reconvla_core.model.heads import chunk_attention_mask


def parallel(norm_stats, seed: int = 0, **overrides):
    overrides.setdefault("recon_target", "gaze")
    return build_tiny(norm_stats, seed=seed, action_head="parallel", **overrides)


def fit(model, batch, steps: int, lr: float) -> None:
    """A few AdamW steps on one batch over every trainable parameter group."""
    params = [p for group in model.parameter_groups().values() for p in group]
    optimizer = torch.optim.AdamW(params, lr=lr)
    for _ in range(steps):
        model(batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def test_processor_appends_one_query_per_chunk_step_and_continuous_targets(norm_stats):
    model = parallel(norm_stats)
    obs = make_observation(0)
    sample = model.processor(**{k: obs[k] for k in ("base_image", "wrist_image", "instruction", "state", "actions",
                                                    "gaze_box")})
    k, d = model.config.chunk_size, model.config.action_dim
    assert int(sample["action_query_mask"].sum()) == k
    assert bool(sample["action_query_mask"][-k:].all())  # the queries close the sequence
    assert sample["actions"].shape == (k, d) and sample["actions"].dtype == torch.float32
    assert float(sample["actions"].abs().max()) <= 1.0
    assert "labels" not in sample  # no token targets: the loss is L1 on the continuous chunk
    # Decoding the targets gives the chunk back (q01..q99 clipping aside, the helper stays inside).
    decoded = model.processor.decode_continuous(sample["actions"].numpy(), state=obs["state"])
    np.testing.assert_allclose(decoded, obs["actions"], atol=1e-5)


def test_forward_shapes_and_l1_loss(norm_stats):
    model = parallel(norm_stats).train()
    batch = make_batch(model, n=3)  # different instruction lengths: right padding before the queries' end
    out = model(batch)
    assert out.action_accuracy is None
    assert out.loss.item() == pytest.approx(out.action_loss.item() + out.recon_loss.item(), rel=1e-5)
    embeds = model.embed_inputs(batch["input_ids"], batch["image_mask"], batch["pixel_values"],
                                None, batch["action_query_mask"])
    _, actions, _ = model.run_parallel(embeds, batch["attention_mask"], batch["action_query_mask"])
    assert actions.shape == (3, model.config.chunk_size, model.config.action_dim)
    expected = (actions - batch["actions"]).abs().mean()
    assert out.action_loss.item() == pytest.approx(expected.item(), rel=1e-4)


def test_padded_chunk_steps_do_not_count(norm_stats):
    model = parallel(norm_stats, recon_target="none")  # eval: no dropout, the same prediction twice
    batch = make_batch(model, n=2)
    batch["action_is_pad"] = torch.zeros(2, model.config.chunk_size, dtype=torch.bool)
    batch["action_is_pad"][:, 3:] = True
    with torch.no_grad():
        clean = model(batch).action_loss.item()
        batch["actions"][:, 3:] += 50.0  # garbage past the episode's end must not change the loss
        assert model(batch).action_loss.item() == pytest.approx(clean, rel=1e-6)
        embeds = model.embed_inputs(batch["input_ids"], batch["image_mask"], batch["pixel_values"], None,
                                    batch["action_query_mask"])
        _, predicted, _ = model.run_parallel(embeds, batch["attention_mask"], batch["action_query_mask"])
    assert clean == pytest.approx((predicted[:, :3] - batch["actions"][:, :3]).abs().mean().item(), rel=1e-4)


def test_queries_see_the_prompt_and_each_other_and_the_prompt_stays_causal():
    attention = torch.tensor([[1, 1, 1, 1, 1, 0]])
    queries = torch.tensor([[False, False, True, True, True, False]])
    allowed = chunk_attention_mask(attention, queries, torch.float32)[0, 0] == 0
    assert bool(allowed[2, 4]) and bool(allowed[4, 2])  # bidirectional among the queries
    assert bool(allowed[2, :2].all())  # a query sees the whole prompt
    assert not bool(allowed[0, 1]) and not bool(allowed[1, 2])  # the prompt stays causal, never sees queries
    assert not bool(allowed[:, 5].any())  # padding is never attended to


def test_prompt_hidden_states_do_not_depend_on_the_queries(norm_stats):
    model = parallel(norm_stats, recon_target="none")
    batch = make_batch(model, n=1)
    with torch.no_grad():
        embeds = model.embed_inputs(batch["input_ids"], batch["image_mask"], batch["pixel_values"], None,
                                    batch["action_query_mask"])
        first, _, _ = model.run_parallel(embeds, batch["attention_mask"], batch["action_query_mask"])
        model.action_head.queries.add_(1.0)
        embeds = model.embed_inputs(batch["input_ids"], batch["image_mask"], batch["pixel_values"], None,
                                    batch["action_query_mask"])
        second, _, _ = model.run_parallel(embeds, batch["attention_mask"], batch["action_query_mask"])
    prompt = ~batch["action_query_mask"][0]
    torch.testing.assert_close(first[0, prompt], second[0, prompt])


def test_one_decoder_pass_per_chunk(norm_stats, observation):
    model = parallel(norm_stats, recon_target="none", vision_film=True)
    args = (observation["base_image"], observation["wrist_image"], observation["instruction"], observation["state"])
    first = model.predict_action(*args)  # encodes the instruction for FiLM once (a short pass of its own)
    calls = []
    handle = model.llm.get_decoder().register_forward_hook(lambda *args: calls.append(1))
    try:
        prediction = model.predict(*args, return_attention=True)
    finally:
        handle.remove()
    assert len(calls) == 1  # actions and the attention map from the same pass; the instruction is cached
    np.testing.assert_allclose(prediction.actions, first, atol=1e-5)
    model.train()
    assert "_instruction_cache" not in model.__dict__  # training changes the weights: the cache goes
    assert prediction.actions.shape == (model.config.chunk_size, model.config.action_dim)
    assert np.isfinite(prediction.actions).all() and prediction.box is None
    assert prediction.attention.shape == (model.config.grid_size,) * 2
    assert prediction.attention.sum() == pytest.approx(1.0, abs=1e-4)


def test_gradients_reach_the_vision_tower_film_and_queries(norm_stats):
    model = parallel(norm_stats, recon_target="none", vision_film=True, train_vision=True).train()
    # FiLM starts as the identity (zero weights): give it a nudge so the gradient to the tower flows through it
    batch = make_batch(model, n=2)
    model(batch).loss.backward()
    film = model.vision_film.proj
    assert film.weight.grad is not None and film.weight.grad.abs().sum() > 0
    assert model.vision.encoder.layers[0].mlp.fc1.weight.grad.abs().sum() > 0
    assert model.action_head.queries.grad.abs().sum() > 0
    assert model.llm.get_output_embeddings().weight.grad is None  # the parallel head never uses the LM head
    groups = model.parameter_groups()
    trainable = {id(p) for params in groups.values() for p in params}
    assert id(model.llm.get_output_embeddings().weight) not in trainable
    assert {id(p) for p in model.vision_film.parameters()} <= trainable
    assert {id(p) for p in model.action_head.parameters()} <= trainable


def test_film_starts_as_identity_and_then_conditions_vision_on_the_instruction(norm_stats, observation):
    plain = parallel(norm_stats, seed=3, recon_target="none")
    filmed = parallel(norm_stats, seed=3, recon_target="none", vision_film=True)
    filmed.load_state_dict(plain.state_dict(), strict=False)
    args = (observation["base_image"], observation["wrist_image"])
    np.testing.assert_allclose(plain.predict_action(*args, "pick up the red block", observation["state"]),
                               filmed.predict_action(*args, "pick up the red block", observation["state"]), atol=1e-5)
    with torch.no_grad():
        filmed.vision_film.proj.weight.normal_(std=0.05)
        red = filmed.prepare_prompt(*args, "pick up the red block", observation["state"])
        blue = filmed.prepare_prompt(*args, "pick up the blue block", observation["state"])
    image = red[1]
    assert not torch.allclose(red[0][0, image], blue[0][0, blue[1]])  # the image tokens depend on the colour word


def test_training_lowers_the_l1_loss(norm_stats):
    model = parallel(norm_stats, seed=1, recon_target="none", vision_film=True).train()
    batch = make_batch(model, n=4)
    first = model(batch).action_loss.item()
    fit(model, batch, steps=25, lr=1e-3)
    assert model(batch).action_loss.item() < first * 0.6


def test_checkpoint_round_trip(norm_stats, observation, tmp_path):
    model = parallel(norm_stats, seed=2, vision_film=True, action_mode="delta")
    stats = dict(norm_stats)
    model.set_norm_stats(stats)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = ReconVLA.from_pretrained(tmp_path / "ckpt")
    assert loaded.config.action_head == "parallel" and loaded.config.vision_film
    args = (observation["base_image"], observation["wrist_image"], observation["instruction"], observation["state"])
    np.testing.assert_array_equal(model.predict_action(*args), loaded.predict_action(*args))


def test_token_checkpoint_without_the_new_fields_still_loads(norm_stats, observation, tmp_path):
    import json

    model = build_tiny(norm_stats, recon_target="none")
    model.save_pretrained(tmp_path / "old")
    config_file = tmp_path / "old" / "config.json"
    raw = json.loads(config_file.read_text())
    del raw["action_head"], raw["vision_film"]  # as written before the parallel head existed
    raw["action_input_dropout"], raw["grounding_box_weight"] = 0.0, 0.0  # and with the options since removed
    config_file.write_text(json.dumps(raw))
    loaded = ReconVLA.from_pretrained(tmp_path / "old")
    assert loaded.config.action_head == "tokens" and loaded.action_head is None
    args = (observation["base_image"], observation["wrist_image"], observation["instruction"], observation["state"])
    np.testing.assert_array_equal(model.predict_action(*args), loaded.predict_action(*args))


def test_a_config_with_the_removed_gripper_point_weight_loads_only_with_it_off(norm_stats, observation, tmp_path):
    import json

    from reconvla_core.model.checkpoint import CheckpointError

    model = build_tiny(norm_stats, recon_target="none")
    model.save_pretrained(tmp_path / "old")
    config_file = tmp_path / "old" / "config.json"
    raw = json.loads(config_file.read_text())
    raw["gripper_point_weight"] = 0.0  # as every config saved while the option existed
    config_file.write_text(json.dumps(raw))
    loaded = ReconVLA.from_pretrained(tmp_path / "old")
    assert not hasattr(loaded.config, "gripper_point_weight")
    args = (observation["base_image"], observation["wrist_image"], observation["instruction"], observation["state"])
    np.testing.assert_array_equal(model.predict_action(*args), loaded.predict_action(*args))
    # On, its MLP ran at inference: the model cannot be rebuilt, and loading says why.
    with pytest.raises(ValueError, match=r"gripper_point_weight=1.0: this option was removed"):
        ReconVLAConfig.from_dict({**raw, "gripper_point_weight": 1.0})
    config_file.write_text(json.dumps({**raw, "gripper_point_weight": 1.0}))
    with pytest.raises(CheckpointError, match=r"gripper_point_weight=1.0: this option was removed"):
        ReconVLA.from_pretrained(tmp_path / "old")


def test_config_refuses_an_unknown_head_and_answer_box_on_the_parallel_head():
    with pytest.raises(ValueError, match="action_head"):
        ReconVLAConfig.from_preset("tiny", action_head="diffusion")
    with pytest.raises(ValueError, match="answer_box"):
        ReconVLAConfig.from_preset("tiny", action_head="parallel", answer_box=True)


def test_spatial_keypoints_feed_the_queries_and_learn_the_gaze_point(norm_stats):
    model = parallel(norm_stats, seed=4, recon_target="none", spatial_keypoints=4, gaze_keypoint_weight=1.0).train()
    batch = make_batch(model, n=2)
    # The gaze box's centre in the stitched frame: x as is, y squeezed into the base view's top part.
    expected = model.processor.gaze_point(make_observation(0)["gaze_box"])
    np.testing.assert_allclose(batch["gaze_point"][0].numpy(), expected, atol=1e-6)
    assert 0.0 < expected[1] < model.config.stitch_top_fraction
    out = model(batch)
    assert out.grounding_loss is not None
    assert out.loss.item() == pytest.approx(out.action_loss.item() + out.grounding_loss.item(), rel=1e-5)
    params = [p for group in model.parameter_groups().values() for p in group]
    assert {id(p) for p in model.keypoints.parameters()} <= {id(p) for p in params}
    first = out.grounding_loss.item()
    fit(model, batch, steps=30, lr=3e-3)
    assert model(batch).grounding_loss.item() < first * 0.5


def test_heatmap_divergence_is_zero_on_the_target_and_pulls_up_a_right_cell_of_tiny_weight():
    from reconvla_core.model.keypoints import expected_points, grid_centres, heatmap_divergence

    coords = grid_centres(10, 10)
    point = torch.tensor([[0.25, 0.65]])
    target = torch.softmax(-((coords - point) ** 2).sum(-1) / (2 * 0.03 ** 2), dim=-1)[None]
    assert heatmap_divergence(target, coords, point, 0.03).item() == pytest.approx(0.0, abs=1e-6)
    # The keypoint's mass sits on another object: the right cells hold almost nothing.
    logits = torch.full((1, 100), -10.0)
    logits[0, 7] = 10.0
    logits.requires_grad_(True)
    heat = torch.softmax(logits, dim=-1)
    right = int(((coords - point) ** 2).sum(-1).argmin())
    l1 = (expected_points(heat, coords) - point).abs().sum()
    (l1_grad,) = torch.autograd.grad(l1, logits, retain_graph=True)
    (kl_grad,) = torch.autograd.grad(heatmap_divergence(heat, coords, point, 0.03).sum(), logits)
    assert abs(l1_grad[0, right].item()) < 1e-6  # the coordinate loss does not see the right cell
    assert kl_grad[0, right].item() < -0.1  # the heat-map loss raises it


def test_gaze_heatmap_loss_adds_to_the_keypoint_loss_and_trains_the_keypoints(norm_stats):
    with pytest.raises(ValueError, match="gaze_heatmap_weight"):
        ReconVLAConfig.from_preset("tiny", action_head="parallel", spatial_keypoints=2, gaze_heatmap_weight=1.0)
    with pytest.raises(ValueError, match="gaze_heatmap_weight"):
        ReconVLAConfig.from_preset("tiny", action_head="parallel", spatial_keypoints=2, gaze_keypoint_weight=1.0,
                                   gaze_heatmap_weight=float("nan"))
    model = parallel(norm_stats, seed=5, recon_target="none", spatial_keypoints=2, keypoint_encoder="conv",
                     gaze_keypoint_weight=1.0, gaze_heatmap_weight=0.5).train()
    batch = make_batch(model, n=2)
    out = model(batch)
    assert out.heatmap_loss is not None and out.heatmap_loss.item() > 0
    assert out.loss.item() == pytest.approx(out.action_loss.item() + out.grounding_loss.item()
                                            + 0.5 * out.heatmap_loss.item(), rel=1e-5)
    first = out.heatmap_loss.item()
    fit(model, batch, steps=60, lr=3e-3)
    after = model(batch)
    assert after.heatmap_loss.item() < first * 0.5
    # Rows without a gaze box count zero.
    batch["gaze_valid"][:] = False
    assert model(batch).heatmap_loss.item() == 0.0


def test_keypoints_need_the_parallel_head():
    with pytest.raises(ValueError, match="parallel"):
        ReconVLAConfig.from_preset("tiny", spatial_keypoints=2)
    with pytest.raises(ValueError, match="spatial_keypoints"):
        ReconVLAConfig.from_preset("tiny", action_head="parallel", gaze_keypoint_weight=1.0)


def test_film_instruction_encoding_knows_word_order(norm_stats):
    """A mean of byte embeddings cannot tell these two apart; the contextual encoding must."""
    model = parallel(norm_stats, recon_target="none", vision_film=True)
    obs = make_observation(0)
    encodings = []
    for instruction in ("stack the red block on the blue block", "stack the blue block on the red block"):
        sample = model.processor(base_image=obs["base_image"], wrist_image=obs["wrist_image"],
                                 instruction=instruction, state=obs["state"])
        with torch.no_grad():
            encodings.append(model.encode_instruction(sample["input_ids"][None], sample["instruction_mask"][None]))
    assert not torch.allclose(encodings[0], encodings[1], atol=1e-4)


def test_action_head_state_feeds_the_exact_state_and_keypoints_to_the_head(norm_stats, observation, tmp_path):
    with pytest.raises(ValueError, match="parallel"):
        ReconVLAConfig.from_preset("tiny", action_head_state=True)
    model = parallel(norm_stats, seed=5, recon_target="none", spatial_keypoints=2, action_head_state=True)
    batch = make_batch(model, n=2)
    assert batch["state"].shape == (2, model.config.state_dim) and float(batch["state"].abs().max()) <= 1.0
    assert model.action_head.geometry_dim == model.config.state_dim + 4
    out = model(batch)
    assert out.action_loss is not None
    missing = {k: v for k, v in batch.items() if k != "state"}
    with pytest.raises(ValueError, match="state"):
        model(missing)
    # The head reads the state directly: a state change below one state-token bin still moves the chunk.
    model.eval()
    args = (observation["base_image"], observation["wrist_image"], observation["instruction"])
    state = np.asarray(observation["state"], dtype=np.float64)
    nudged = state.copy()
    nudged[0] += 1e-4
    assert model.processor(**dict(zip(("base_image", "wrist_image", "instruction"), args), state=state))[
        "input_ids"].tolist() == model.processor(**dict(zip(("base_image", "wrist_image", "instruction"), args),
                                                        state=nudged))["input_ids"].tolist()
    assert not np.array_equal(model.predict_action(*args, state), model.predict_action(*args, nudged))
    # It saves and loads with the option.
    model.save_pretrained(tmp_path / "ckpt")
    loaded = ReconVLA.from_pretrained(tmp_path / "ckpt")
    assert loaded.config.action_head_state
    np.testing.assert_array_equal(model.predict_action(*args, state), loaded.predict_action(*args, state))


def test_gaze_teacher_forcing_gives_the_head_the_gaze_centre_at_training_only(norm_stats):
    with pytest.raises(ValueError, match="action_head_state"):
        ReconVLAConfig.from_preset("tiny", action_head="parallel", spatial_keypoints=2, gaze_keypoint_weight=1.0,
                                   gaze_teacher_forcing=0.5)
    model = parallel(norm_stats, seed=6, recon_target="none", spatial_keypoints=2, gaze_keypoint_weight=1.0,
                     action_head_state=True, gaze_teacher_forcing=1.0)
    batch = make_batch(model, n=2)
    seen = []
    model.action_head.register_forward_pre_hook(lambda module, args: seen.append(args[1].detach().clone()))
    keypoint0 = slice(model.config.state_dim, model.config.state_dim + 2)
    model.train()
    model(batch)
    np.testing.assert_allclose(seen[-1][:, keypoint0].numpy(), batch["gaze_point"].numpy(), atol=1e-6)
    model.eval()
    with torch.no_grad():
        model(batch)
    assert not np.allclose(seen[-1][:, keypoint0].numpy(), batch["gaze_point"].numpy(), atol=1e-3)


def test_standardize_head_inputs_uses_the_dataset_statistics_and_saves_them(norm_stats, observation, tmp_path):
    with pytest.raises(ValueError, match="action_head_state"):
        ReconVLAConfig.from_preset("tiny", action_head="parallel", standardize_head_inputs=True)
    model = parallel(norm_stats, seed=7, recon_target="none", spatial_keypoints=2, action_head_state=True,
                     standardize_head_inputs=True)
    stats = {k: {s: list(v) for s, v in entry.items()} for k, entry in norm_stats.items()}
    with pytest.raises(ValueError, match="gaze_box"):
        model.standardize_head_inputs(stats)
    stats["observation.gaze_box"] = {"mean": [0.3, 0.4, 0.5, 0.6, 1.0], "std": [0.1, 0.05, 0.1, 0.05, 0.0]}
    state_mean = np.asarray(stats["observation.state"]["mean"], np.float64)
    set_values = model.standardize_head_inputs(stats)
    head = model.action_head
    # The dataset's mean state, normalised, is the state part's zero; the mean gaze centre the keypoints'.
    _, state_norm = model.processor.normalizers()
    np.testing.assert_allclose(head.geometry_shift[:7].numpy(), state_norm.normalize(state_mean), atol=1e-5)
    centre = model.processor.gaze_point(np.array([0.3, 0.4, 0.5, 0.6]))
    np.testing.assert_allclose(head.geometry_shift[7:9].numpy(), centre, atol=1e-6)
    np.testing.assert_allclose(head.geometry_shift[9:11].numpy(), centre, atol=1e-6)
    assert head.geometry_scale[7].item() == pytest.approx(0.1) and (head.geometry_scale > 0).all()
    assert set_values["shift"][7] == pytest.approx(centre[0], abs=1e-4)
    with pytest.raises(ValueError, match="positive"):
        head.set_geometry_stats(torch.zeros(11), torch.zeros(11))
    # The head sees (geometry - shift) / scale: the standardisation is part of the weights' meaning.
    seen = []
    head.mlp.register_forward_pre_hook(lambda module, args: seen.append(args[1][0, 0].detach().clone()))
    batch = make_batch(model, n=1)
    model.eval()
    with torch.no_grad():
        model(batch)
    geometry = model.head_geometry(batch["state"], None)
    np.testing.assert_allclose(seen[-1][:7].numpy(), ((geometry[0] - head.geometry_shift[:7]) /
                                                      head.geometry_scale[:7]).numpy(), atol=1e-5)
    # Saved with the weights, loaded back the same.
    args = (observation["base_image"], observation["wrist_image"], observation["instruction"], observation["state"])
    model.save_pretrained(tmp_path / "ckpt")
    loaded = ReconVLA.from_pretrained(tmp_path / "ckpt")
    assert torch.equal(loaded.action_head.geometry_shift, head.geometry_shift)
    np.testing.assert_array_equal(model.predict_action(*args), loaded.predict_action(*args))


def test_a_given_gaze_point_replaces_keypoint_0_at_inference(norm_stats, observation, tiny_model):
    from reconvla_core.policy import ModelPolicy

    model = parallel(norm_stats, seed=8, recon_target="none", spatial_keypoints=2, action_head_state=True)
    model.eval()
    args = (observation["base_image"], observation["wrist_image"], observation["instruction"], observation["state"])
    own = model.predict(*args)
    assert own.gaze_point.shape == (2,) and np.all((own.gaze_point >= 0) & (own.gaze_point <= 1))
    given = model.predict(*args, gaze_point=[0.9, 0.1])
    np.testing.assert_allclose(given.gaze_point, [0.9, 0.1], atol=1e-6)
    assert not np.allclose(given.actions, own.actions)
    with pytest.raises(ValueError, match="gaze_point"):
        model.predict(*args, gaze_point=[0.5])
    # The policy speaks base-view coordinates for base + wrist images: y scales by the base band's height.
    policy = ModelPolicy(model)
    obs = {"base_image": observation["base_image"], "wrist_image": observation["wrist_image"],
           "instruction": observation["instruction"], "state": observation["state"], "gaze_point": [0.9, 0.2]}
    chunk = policy.infer(obs)
    np.testing.assert_allclose(chunk.gaze_point, [0.9, 0.2], atol=1e-6)
    scale = model.processor.base_view_scale
    np.testing.assert_allclose(chunk.actions, model.predict(*args, gaze_point=np.array([0.9, 0.2]) * scale).actions)
    # A model without keypoints has nothing to replace.
    tiny_model.eval()
    with pytest.raises(ValueError, match="keypoint"):
        tiny_model.predict(*args, gaze_point=[0.5, 0.5])


def test_conv_keypoints_localise_at_a_finer_grid_condition_on_the_instruction_and_round_trip(
        norm_stats, observation, tmp_path):
    from reconvla_core.model.modeling_reconvla import ConvKeypoints

    with pytest.raises(ValueError, match="keypoint_encoder"):
        ReconVLAConfig.from_preset("tiny", action_head="parallel", spatial_keypoints=2, keypoint_encoder="resnet")
    model = parallel(norm_stats, seed=9, recon_target="none", spatial_keypoints=2, keypoint_encoder="conv",
                     gaze_keypoint_weight=1.0, action_head_state=True).train()
    assert isinstance(model.keypoints, ConvKeypoints)
    assert model.config.encodes_instruction and not model.config.vision_film
    batch = make_batch(model, n=2)
    assert "instruction_mask" in batch  # the conv net is FiLM-conditioned on the instruction encoding
    out = model(batch)
    out.loss.backward()
    for part in (model.keypoints.stem[0], model.keypoints.body_film, model.keypoints.logits):
        assert part.weight.grad is not None and part.weight.grad.abs().sum() > 0
    # Its softmax runs over a quarter-resolution map (28x28 for the tiny preset's 112 px), not the 8x8 grid.
    with torch.no_grad():
        features = model.keypoints.body(model.keypoints.stem(batch["pixel_values"]))
    assert features.shape[-2:] == (model.config.vision.image_size // 4,) * 2
    first = model(batch).grounding_loss.item()
    fit(model, batch, steps=80, lr=3e-3)
    assert model(batch).grounding_loss.item() < first * 0.5
    # Another instruction moves the keypoints (the same image).
    model.eval()
    obs = make_observation(0)
    points = []
    for instruction in ("pick up the red block", "pick up the blue block"):
        points.append(model.predict(obs["base_image"], obs["wrist_image"], instruction, obs["state"]).gaze_point)
    assert not np.allclose(points[0], points[1], atol=1e-5)
    # Save / load keeps the encoder and its weights.
    model.save_pretrained(tmp_path / "ckpt")
    loaded = ReconVLA.from_pretrained(tmp_path / "ckpt").eval()
    assert isinstance(loaded.keypoints, ConvKeypoints)
    args = (observation["base_image"], observation["wrist_image"], observation["instruction"], observation["state"])
    np.testing.assert_allclose(loaded.predict(*args).actions, model.predict(*args).actions, atol=1e-5)


def test_a_finetune_switches_the_keypoint_encoder_and_keeps_the_rest(norm_stats, observation):
    from reconvla_core.model.modeling_reconvla import ConvKeypoints
    from reconvla_core.train.model_setup import apply_finetune_options

    model = parallel(norm_stats, seed=10, recon_target="none", spatial_keypoints=2, action_head_state=True)
    embed = model.keypoints.embed.weight.detach().clone()
    head = {k: v.clone() for k, v in model.action_head.state_dict().items()}
    applied = apply_finetune_options(model, {"keypoint_encoder": "conv", "spatial_keypoints": 2})
    assert applied == {"keypoint_encoder": "conv"}
    assert isinstance(model.keypoints, ConvKeypoints) and model.config.keypoint_encoder == "conv"
    torch.testing.assert_close(model.keypoints.embed.weight, embed)
    for key, value in model.action_head.state_dict().items():
        torch.testing.assert_close(value, head[key])
    params = {id(p) for group in model.parameter_groups().values() for p in group}
    assert {id(p) for p in model.keypoints.parameters()} <= params  # the optimiser will train it
    sample = model.processor(base_image=observation["base_image"], wrist_image=observation["wrist_image"],
                             instruction=observation["instruction"], state=observation["state"])
    assert "instruction_mask" in sample  # the processor follows the switched config
    model.eval()
    assert model.predict(observation["base_image"], observation["wrist_image"], observation["instruction"],
                         observation["state"]).actions.shape == (5, 7)
    with pytest.raises(ValueError, match="no spatial keypoints"):
        parallel(norm_stats, recon_target="none").switch_option("keypoint_encoder", "conv")


def test_keypoint_state_switched_on_starts_where_it_was_then_learns_from_the_state(norm_stats, observation, tmp_path):
    """keypoint_state: the conv keypoints' FiLM also reads the normalised state. Switched on in a
    finetune it changes nothing at first (zero-initialised), gets gradients, and then the state alone
    (same image, same instruction) moves the keypoints; it saves and loads."""
    from reconvla_core.train.model_setup import apply_finetune_options

    with pytest.raises(ValueError, match="keypoint_state"):
        ReconVLAConfig.from_preset("tiny", action_head="parallel", spatial_keypoints=2, keypoint_state=True)
    model = parallel(norm_stats, seed=11, recon_target="none", spatial_keypoints=2, keypoint_encoder="conv",
                     gaze_keypoint_weight=1.0, action_head_state=True).eval()
    args = (observation["base_image"], observation["wrist_image"], observation["instruction"], observation["state"])
    before = model.predict(*args)
    assert apply_finetune_options(model, {"keypoint_state": True}) == {"keypoint_state": True}
    after = model.predict(*args)
    np.testing.assert_allclose(after.gaze_point, before.gaze_point, atol=1e-6)
    np.testing.assert_allclose(after.actions, before.actions, atol=1e-6)
    params = {id(p) for group in model.parameter_groups().values() for p in group}
    assert {id(p) for p in model.keypoints.stem_state.parameters()} <= params
    model.train()
    batch = make_batch(model, n=2)
    model(batch).loss.backward()
    for layer in (model.keypoints.stem_state, model.keypoints.body_state):
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    fit(model, batch, steps=20, lr=3e-3)
    model.eval()
    opened, shut = np.array(observation["state"], float), np.array(observation["state"], float)
    opened[6], shut[6] = 0.07, 0.0
    points = [model.predict(*args[:3], state).gaze_point for state in (opened, shut)]
    assert not np.allclose(points[0], points[1], atol=1e-5)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = ReconVLA.from_pretrained(tmp_path / "ckpt").eval()
    assert loaded.config.keypoint_state and loaded.keypoints.stem_state is not None
    np.testing.assert_allclose(loaded.predict(*args).actions, model.predict(*args).actions, atol=1e-5)
    assert apply_finetune_options(model, {"keypoint_state": False}) == {"keypoint_state": False}
    assert model.keypoints.stem_state is None


def test_gaze_colour_target_is_the_mean_colour_of_the_gaze_box_in_the_model_input(norm_stats):
    model = parallel(norm_stats, recon_target="none", vision_film=True, gaze_colour_weight=1.0)
    obs = make_observation(0)
    base = np.zeros_like(obs["base_image"])
    h, w = base.shape[:2]
    base[int(0.3 * h):int(0.8 * h), int(0.2 * w):int(0.6 * w)] = (200, 40, 10)  # the gaze box, painted
    sample = model.processor(base_image=base, wrist_image=obs["wrist_image"], instruction=obs["instruction"],
                             state=obs["state"], actions=obs["actions"], gaze_box=obs["gaze_box"])
    # Resizing into the model-input frame blurs the box's edge pixels with the black around it.
    np.testing.assert_allclose(sample["gaze_colour"].numpy(), np.array([200, 40, 10]) / 255.0, rtol=0.06)
    assert bool(sample["gaze_valid"])
    # A box thinner than a pixel still reads the pixel it lies in; no box: no target.
    thin = model.processor.gaze_colour(np.full((8, 8, 3), 255, np.uint8), [0.5, 0.2, 0.5, 0.2])
    np.testing.assert_allclose(thin, [1.0, 1.0, 1.0])
    unknown = model.processor(base_image=base, wrist_image=obs["wrist_image"], instruction=obs["instruction"],
                              state=obs["state"], actions=obs["actions"], gaze_box=obs["gaze_box"], gaze_valid=False)
    assert not bool(unknown["gaze_valid"]) and float(unknown["gaze_colour"].abs().sum()) == 0.0


def test_gaze_colour_loss_trains_the_instruction_encoding_with_the_nearer_of_two_guesses(norm_stats):
    from reconvla_core.model.heads import GazeColourHead

    with pytest.raises(ValueError, match="gaze_colour_weight"):
        ReconVLAConfig.from_preset("tiny", action_head="parallel", gaze_colour_weight=1.0)  # no instruction encoding
    guesses = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], [[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]]])
    colour = torch.tensor([[0.0, 0.0, 0.8], [0.1, 0.0, 0.0]])
    # Row 0: the second guess is 0.2 away; row 1 has no box and does not count.
    assert GazeColourHead.loss(guesses, colour, torch.tensor([True, False])).item() == pytest.approx(0.2)
    model = parallel(norm_stats, seed=3, recon_target="gaze", vision_film=True, gaze_colour_weight=2.0).train()
    batch = make_batch(model, n=2)
    out = model(batch)
    assert out.colour_loss is not None and torch.isfinite(out.colour_loss)
    assert out.loss.item() == pytest.approx(out.action_loss.item() + out.recon_loss.item()
                                            + 2.0 * out.colour_loss.item(), rel=1e-5)
    out.colour_loss.backward()  # the colour loss alone reaches the LLM that encodes the instruction
    grad = model.llm.get_input_embeddings().weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0
    assert model.vision_film.proj.weight.grad is None or float(model.vision_film.proj.weight.grad.abs().sum()) == 0


def test_a_finetune_switches_the_gaze_colour_loss_on_and_the_checkpoint_round_trips(norm_stats, observation,
                                                                                     tmp_path):
    from reconvla_core.train.model_setup import apply_finetune_options

    model = parallel(norm_stats, seed=11, recon_target="none", vision_film=True)
    assert model.gaze_colour is None and "gaze_colour" not in make_batch(model, n=1)
    before = model.predict_action(observation["base_image"], observation["wrist_image"], observation["instruction"],
                                  observation["state"])
    assert apply_finetune_options(model, {"gaze_colour_weight": 0.5}) == {"gaze_colour_weight": 0.5}
    params = {id(p) for group in model.parameter_groups().values() for p in group}
    assert {id(p) for p in model.gaze_colour.parameters()} <= params  # the optimiser will train it
    assert model(make_batch(model, n=2)).colour_loss is not None
    model.eval()
    args = (observation["base_image"], observation["wrist_image"], observation["instruction"], observation["state"])
    np.testing.assert_array_equal(model.predict_action(*args), before)  # inference never runs the head
    model.save_pretrained(tmp_path / "ckpt")
    loaded = ReconVLA.from_pretrained(tmp_path / "ckpt")
    assert loaded.config.gaze_colour_weight == 0.5
    for key, value in model.gaze_colour.state_dict().items():
        torch.testing.assert_close(loaded.gaze_colour.state_dict()[key], value)
    model.switch_option("gaze_colour_weight", 0.0)
    assert model.gaze_colour is None


def test_the_bottleneck_action_mlp_round_trips_and_a_finetune_switches_it_afresh(norm_stats, observation, tmp_path):
    from reconvla_core.model.heads import BottleneckActionMLP, ConcatActionMLP
    from reconvla_core.train.model_setup import apply_finetune_options

    with pytest.raises(ValueError, match="action_head_state"):
        ReconVLAConfig.from_preset("tiny", action_head="parallel", action_head_mlp="bottleneck")
    with pytest.raises(ValueError, match="action_head_mlp must be one of"):
        ReconVLAConfig.from_preset("tiny", action_head="parallel", action_head_state=True, action_head_mlp="deep")
    model = parallel(norm_stats, seed=11, recon_target="none", spatial_keypoints=2, action_head_state=True)
    assert isinstance(model.action_head.mlp, ConcatActionMLP)
    assert any(name.startswith("action_head.mlp.0.") for name in model.state_dict())  # the old checkpoints' keys
    queries = model.action_head.queries.detach().clone()
    applied = apply_finetune_options(model, {"action_head_mlp": "bottleneck"})
    assert applied == {"action_head_mlp": "bottleneck"} and isinstance(model.action_head.mlp, BottleneckActionMLP)
    torch.testing.assert_close(model.action_head.queries, queries)
    params = {id(p) for group in model.parameter_groups().values() for p in group}
    assert {id(p) for p in model.action_head.mlp.parameters()} <= params  # the optimiser will train it
    batch = make_batch(model, n=2)
    out = model(batch)
    out.action_loss.backward()
    assert model.action_head.mlp.narrow[1].weight.grad is not None
    model.eval()
    args = (observation["base_image"], observation["wrist_image"], observation["instruction"], observation["state"])
    model.save_pretrained(tmp_path / "ckpt")
    loaded = ReconVLA.from_pretrained(tmp_path / "ckpt")
    assert loaded.config.action_head_mlp == "bottleneck"
    np.testing.assert_array_equal(model.predict_action(*args), loaded.predict_action(*args))
    assert model.predict_action(*args).shape == (5, 7)
