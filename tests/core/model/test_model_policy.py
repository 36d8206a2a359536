"""ModelPolicy (what the policy node runs): actions, attention and the answer's gaze box in frame coordinates."""

from __future__ import annotations

import numpy as np
from model_helpers import build_tiny, make_observation

from reconvla_core.policy import ModelPolicy


def test_model_policy_maps_the_answer_box_into_the_stitched_frame(norm_stats):
    model = build_tiny(norm_stats, seed=7, recon_target="none", answer_box=True)
    obs = make_observation(0)
    frame = model.processor.stitch(obs["base_image"], obs["wrist_image"])
    frame_obs = {"frame": frame, "instruction": obs["instruction"], "state": obs["state"]}
    prediction = ModelPolicy(model).infer(dict(frame_obs, return_attention=True))
    assert prediction.actions.shape == (5, 7) and prediction.attention.shape == (8, 8)
    own = model.predict(None, None, obs["instruction"], obs["state"], stitched_image=frame).box
    top = model.config.stitch_top_fraction  # the base view fills the top of the frame
    np.testing.assert_allclose(prediction.box, [own[0], own[1] * top, own[2], own[3] * top])
    # Given the two views, the box stays in base-view coordinates (what the probe scores).
    separate = ModelPolicy(model).infer(obs)
    assert separate.attention is None
    np.testing.assert_allclose(separate.box, model.predict(obs["base_image"], obs["wrist_image"],
                                                           obs["instruction"], obs["state"]).box)
    plain = build_tiny(norm_stats, seed=7, recon_target="none")
    assert ModelPolicy(plain).infer(frame_obs).box is None
