"""`reconvla bench train`: step time with and without the reconstruction branch, side by side."""

from __future__ import annotations

import argparse

import pytest

from reconvla_core.bench import train as bench_train

pytestmark = pytest.mark.unit


def test_bench_train_tiny_measures_both_variants() -> None:
    parser = argparse.ArgumentParser()
    bench_train.add_arguments(parser)
    args = parser.parse_args(["--steps", "2", "--warmup", "1", "--batch-size", "2", "--breakdown"])
    result = bench_train.run(args)
    assert result["preset"] == "tiny" and result["device"] == "cpu" and result["dtype"] == "fp32"
    assert len(result["step_s_with_recon_all"]) == len(result["step_s_without_recon_all"]) == 2
    assert result["step_s_with_recon"] > 0 and result["step_s_without_recon"] > 0
    assert result["ratio"] == pytest.approx(result["step_s_with_recon"] / result["step_s_without_recon"])
    # The 'with' variant really runs the diffusion loss (epsilon-MSE ~ 1 at init) on top of the action CE.
    assert result["loss_with_recon"] > result["loss_without_recon"] + 0.5
    assert result["params_denoiser"] > 0
    assert result["vae_encode_s"] > 0 and result["denoiser_fwd_bwd_s"] >= 0


def test_bench_train_default_is_tiny_plus_paper_when_a_gpu_allows() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("on a GPU machine the default run also builds the 7B paper geometry")
    parser = argparse.ArgumentParser()
    bench_train.add_arguments(parser)
    args = parser.parse_args(["--steps", "1", "--warmup", "0", "--batch-size", "2"])
    assert args.preset == "auto"
    result = bench_train.run(args)
    assert result["preset"] == "tiny" and result["device"] == "cpu" and result["ratio"] > 0
    assert result["paper"] == {"skipped": "no CUDA GPU"}
