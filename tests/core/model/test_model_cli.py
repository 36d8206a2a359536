"""`reconvla model info` and `reconvla bench infer` through the CLI entry point."""

from __future__ import annotations

import json

from reconvla_core.cli.main import main


def _run(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_model_info_tiny_json(capsys):
    code, out, _ = _run(capsys, ["model", "info", "--preset", "tiny", "--recon-target", "gaze", "--json"])
    assert code == 0
    info = json.loads(out)
    for key in ("params_total", "params_trainable", "params_reconstruction", "image_tokens",
                "action_tokens_per_chunk"):
        assert key in info
    assert info["image_tokens"] == 64 and info["action_tokens_per_chunk"] == 35
    assert 0 < info["params_reconstruction"] < info["params_total"]
    assert info["params_trainable"] < info["params_total"]  # frozen vision tower and VAE


def test_model_info_paper_counts_without_allocating(capsys):
    code, out, _ = _run(capsys, ["model", "info", "--preset", "paper", "--recon-target", "none", "--json"])
    info = json.loads(out)
    assert code == 0 and info["image_tokens"] == 729 and info["params_reconstruction"] == 0
    assert 7.5e9 < info["params_llm"] < 7.7e9  # Qwen2-7B


def test_model_info_recon_none_has_no_reconstruction(capsys):
    _, out, _ = _run(capsys, ["model", "info", "--preset", "tiny", "--recon-target", "none", "--json"])
    assert json.loads(out)["params_reconstruction"] == 0


def test_model_info_bad_checkpoint_is_one_line_error(capsys, tmp_path):
    code, out, err = _run(capsys, ["model", "info", "--checkpoint", str(tmp_path), "--json"])
    assert code == 2 and out == "" and "config.json" in err and len(err.strip().splitlines()) == 1


def test_bench_infer_tiny_json(capsys):
    code, out, _ = _run(capsys, ["bench", "infer", "--preset", "tiny", "--device", "cpu", "--iters", "3",
                                 "--warmup", "1", "--fit-steps", "2", "--json"])
    assert code == 0
    result = json.loads(out)
    for key in ("p50_ms", "p99_ms", "naive_p50_ms", "naive_p99_ms", "speedup", "identical"):
        assert key in result
    assert result["p50_ms"] > 0
    assert abs(result["speedup"] - result["naive_p50_ms"] / result["p50_ms"]) < 0.01
    assert isinstance(result["identical"], bool) and result["tokens_per_chunk"] == 35
