"""`reconvla demo` sizes and starting points: the shipped checkpoint by default, --from-scratch, --init."""

from __future__ import annotations

from pathlib import Path

import pytest
from reconvla_core.demo.pipeline import DemoConfig
from reconvla_core.model.pretrained import SHIPPED_CHECKPOINT, shipped_checkpoint


def test_the_default_demo_finetunes_the_shipped_checkpoint(tmp_path):
    config = DemoConfig.for_mode(tmp_path / "demo", quick=False)
    assert config.init_from == SHIPPED_CHECKPOINT and not config.from_scratch
    assert config.train_steps == 600  # a finetune: fewer steps than from random weights


def test_from_scratch_trains_from_random_weights(tmp_path):
    config = DemoConfig.for_mode(tmp_path / "demo", quick=False, from_scratch=True)
    assert config.init_from is None and config.train_steps == 1500
    with pytest.raises(ValueError, match="from-scratch"):
        DemoConfig.for_mode(tmp_path / "demo", quick=False, from_scratch=True, init_from=tmp_path)


def test_an_explicit_checkpoint_wins(tmp_path):
    assert DemoConfig.for_mode(tmp_path / "d", quick=True, init_from=tmp_path).init_from == tmp_path
    config = DemoConfig.for_mode(tmp_path / "d", quick=True, pretrained=tmp_path)
    assert config.pretrained == tmp_path and config.init_from is None


def test_the_shipped_checkpoint_is_a_complete_small_checkpoint():
    path = shipped_checkpoint()
    for name in ("config.json", "model.safetensors", "reconstruction.safetensors", "norm_stats.json",
                 "metadata.json", "README.md", "tokenizer/tokenizer.json"):
        assert (path / name).is_file(), name
    assert sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) <= 20 * 2**20  # <= 20 MB in git


def test_a_missing_shipped_checkpoint_says_what_to_do(monkeypatch, tmp_path):
    import reconvla_core.model.pretrained as pretrained

    monkeypatch.setattr(pretrained, "SHIPPED_CHECKPOINT", Path(tmp_path / "gone"))
    with pytest.raises(FileNotFoundError, match="--from-scratch"):
        pretrained.shipped_checkpoint()
