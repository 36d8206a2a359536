"""Training configs: shipped files, overrides with types, validation that fails fast and says why."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from reconvla_core.train import accelerate_config, available_configs, load_train_config, validate_config
from reconvla_core.train.config import ConfigError, config_from_dict
from reconvla_core.train.config_loading import ACCELERATE_CONFIG_DIR, apply_overrides

pytestmark = pytest.mark.unit


@pytest.fixture
def fake_dataset(tmp_path: Path) -> Path:
    """Only the marker validation looks for (meta/info.json); no data is read by these tests."""
    root = tmp_path / "ds"
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text("{}")
    return root


def test_shipped_configs_by_name_and_paper_recipe() -> None:
    assert {"tiny-sim", "paper-pretrain", "paper-finetune"} <= set(available_configs())
    pre = load_train_config("paper-pretrain")
    assert pre.train.global_batch_size == 512
    assert pre.optim.lr == pytest.approx(2e-5) and pre.optim.scheduler == "cosine"
    assert pre.optim.warmup_ratio == pytest.approx(0.03) and pre.optim.weight_decay == 0.0
    assert pre.train.mixed_precision == "bf16" and pre.train.gradient_checkpointing
    assert [s.weight for s in pre.data.sources] == [1.0, 0.0625, 1.0]
    assert pre.grad_accum_for(8) == 4  # 8 GPUs x 16 x 4 = 512
    fine = load_train_config("paper-finetune")  # extends paper-pretrain
    assert fine.stage == "finetune" and fine.init_from and fine.train.global_batch_size == 512
    assert len(fine.data.sources) == 1
    assert fine.warmup_for(1000) == 30


def test_tiny_finetune_recipe_extends_tiny_sim() -> None:
    tiny, fine = load_train_config("tiny-sim"), load_train_config("tiny-sim-finetune")
    assert fine.stage == "finetune" and fine.init_from
    assert fine.optim.lr == pytest.approx(tiny.optim.lr / 10)  # a tenth: adapt, do not overwrite
    assert fine.optim.lr_denoiser == pytest.approx(tiny.optim.lr_denoiser / 10)
    assert fine.model.overrides.get("gaze_heatmap_weight") == 0.0  # keypoint 0 keeps its L1 alone
    assert ({k: v for k, v in fine.model.overrides.items() if k != "gaze_heatmap_weight"}
            == {k: v for k, v in tiny.model.overrides.items() if k != "gaze_heatmap_weight"})
    assert fine.data.static_threshold == tiny.data.static_threshold


def test_overrides_are_parsed_to_field_types(fake_dataset: Path) -> None:
    config = load_train_config(
        "tiny-sim",
        ["optim.lr=3e-4", "lr_denoiser=1e-3", "train.max_steps=7", "lora.enabled=true",
         "lora.target_modules=q_proj,v_proj", "train.grad_accum_steps=null", "optim.betas=[0.9, 0.95]",
         "train.mixed_precision=no", "name=2024"],
        data=[f"{fake_dataset}:0.5"],
    )
    assert config.optim.lr == 3e-4 and isinstance(config.optim.lr, float)
    assert config.optim.lr_denoiser == 1e-3
    assert config.train.max_steps == 7 and isinstance(config.train.max_steps, int)
    assert config.lora.enabled is True and config.lora.target_modules == ["q_proj", "v_proj"]
    assert config.optim.betas == [0.9, 0.95]
    assert config.train.mixed_precision == "no" and config.name == "2024"  # string fields keep the text
    assert config.data.sources[0].path == str(fake_dataset) and config.data.sources[0].weight == 0.5
    other = load_train_config("tiny-sim", data=[f"{fake_dataset}:0.0625:bridge", str(fake_dataset)])
    assert [(s.weight, s.features) for s in other.data.sources] == [(0.0625, "bridge"), (1.0, "reconvla")]
    assert config.group_lrs() == {"llm": 3e-4, "projector": 3e-4, "denoiser": 1e-3, "vision": 3e-4}
    assert validate_config(config) == 1  # global 16 = 16 per device x 1 process x 1
    assert validate_config(load_train_config("tiny-sim", ["train.per_device_batch_size=4"],
                                             data=[str(fake_dataset)])) == 4  # 16 = 4 x 1 x 4 accumulation


def test_unknown_keys_suggest_the_right_one() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lrr'; did you mean 'lr'"):
        load_train_config("tiny-sim", ["optim.lrr=1"])
    with pytest.raises(ConfigError, match=r"'trian'; did you mean 'train'"):
        config_from_dict({"trian": {"max_steps": 1}})
    with pytest.raises(ConfigError, match=r"ambiguous"):
        apply_overrides({}, ["every_steps=3"])  # checkpoint, logging and eval all have it
    with pytest.raises(FileNotFoundError, match=r"did you mean 'tiny-sim'"):
        load_train_config("tiny_sim")


def test_wrong_types_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"train.max_steps: expected an integer"):
        load_train_config("tiny-sim", ["train.max_steps=many"])
    with pytest.raises(ConfigError, match=r"lora.enabled: expected true/false"):
        load_train_config("tiny-sim", ["lora.enabled=maybe"])


def test_batch_division_and_ranges(fake_dataset: Path) -> None:
    base = ["train.global_batch_size=12", "train.per_device_batch_size=4"]
    config = load_train_config("tiny-sim", base, data=[str(fake_dataset)])
    assert validate_config(config, num_processes=1) == 3
    with pytest.raises(ConfigError, match=r"global_batch_size 12 is not divisible by per_device_batch_size 4 x 2"):
        validate_config(config, num_processes=2)
    explicit = load_train_config("tiny-sim", base + ["train.grad_accum_steps=2"], data=[str(fake_dataset)])
    with pytest.raises(ConfigError, match=r"!= per_device_batch_size 4 x 1 processes x grad_accum_steps 2"):
        validate_config(explicit)
    for override, message in [
        ("optim.lr_projector=0", r"optim.lr_projector: learning rate of the projector group"),
        ("optim.warmup_ratio=1.5", r"warmup_ratio"),
        ("model.recon_target=depth", r"model: recon_target must be one of \('none', 'full', 'gaze'\), got 'depth'"),
        ("train.mixed_precision=fp8", r"mixed_precision"),
        ("optim.scheduler=step", r"optim.scheduler"),
        ("data.relabelled_actions=all", r"data.relabelled_actions must be one of \('step', 'none'\)"),
    ]:
        with pytest.raises(ConfigError, match=message):
            validate_config(load_train_config("tiny-sim", [override], data=[str(fake_dataset)]))


def test_missing_data_and_init_checkpoint(tmp_path: Path, fake_dataset: Path) -> None:
    with pytest.raises(ConfigError, match=r"no training data: pass --data"):
        validate_config(load_train_config("tiny-sim"))
    with pytest.raises(ConfigError, match=r"dataset directory .*nope does not exist"):
        validate_config(load_train_config("tiny-sim", data=[str(tmp_path / "nope")]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"no meta/info.json"):
        validate_config(load_train_config("tiny-sim", data=[str(tmp_path / "empty")]))
    with pytest.raises(ConfigError, match=r"stage finetune needs init_from"):
        validate_config(load_train_config("tiny-sim", ["stage=finetune"], data=[str(fake_dataset)]))
    with pytest.raises(ConfigError, match=r"init_from: checkpoint directory .* does not exist"):
        validate_config(load_train_config("tiny-sim", [f"init_from={tmp_path / 'x'}"], data=[str(fake_dataset)]))


def test_yaml_file_with_extends(tmp_path: Path, fake_dataset: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(f"extends: tiny-sim\noptim:\n  lr: 1.0e-4\ndata:\n  sources: ['{fake_dataset}']\n")
    path.write_text(path.read_text() + "train:\n  mixed_precision: no\n")  # unquoted: a YAML 1.1 bool
    config = load_train_config(str(path))
    assert config.name == "mine" and config.optim.lr == 1e-4 and config.train.mixed_precision == "no"
    assert config.optim.lr_denoiser == 5e-4  # inherited
    assert config.data.sources[0].path == str(fake_dataset)
    validate_config(config)


def test_model_section_is_typed_reconvla_config_fields(fake_dataset: Path) -> None:
    """model: is a preset plus any ReconVLAConfig field, nested ones too; overrides reach them typed."""
    config = load_train_config("tiny-sim", ["model.action_head=tokens", "model.spatial_keypoints=0",
                                            "model.gaze_keypoint_weight=0", "model.gaze_heatmap_weight=0",
                                            "model.gaze_colour_weight=0",
                                            "model.action_head_state=false", "model.standardize_head_inputs=false",
                                            "model.gaze_teacher_forcing=0", "model.vision.image_size=168",
                                            "model.vision.patch_size=14", "model.vae.image_size=96",
                                            "model.delta_action_dims=0,1,2", "chunk_size=3"],
                               data=[str(fake_dataset)])
    model = config.model.resolve()
    assert model.action_head == "tokens" and model.chunk_size == 3 and model.delta_action_dims == (0, 1, 2)
    assert model.vision.image_size == 168 and model.grid_size == 12
    assert model.vision.hidden_size == 64  # the rest of the nested config stays the tiny preset's
    assert model.train_vision is True  # set by the recipe, untouched by the overrides
    assert config.model.overrides["vision"] == {"image_size": 168, "patch_size": 14}
    validate_config(config)


def test_model_section_rejects_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'model.action_haed'; did you mean 'action_head'"):
        load_train_config("tiny-sim", ["model.action_haed=tokens"])
    with pytest.raises(ConfigError, match=r"unknown config key 'model.vision.imag_size'; did you mean 'image_size'"):
        load_train_config("tiny-sim", ["model.vision.imag_size=160"])
    with pytest.raises(ConfigError, match=r"model.chunk_size: expected an integer, got 'five'"):
        load_train_config("tiny-sim", ["model.chunk_size=five"])
    with pytest.raises(ConfigError, match=r"model.vision.image_mean: expected 3 values, got 2"):
        load_train_config("tiny-sim", ["model.vision.image_mean=[0.5, 0.5]"])
    with pytest.raises(ConfigError, match=r"model: action_head must be one of .*got 'paralel'"):
        load_train_config("tiny-sim", ["model.action_head=paralel"])
    with pytest.raises(ConfigError, match=r"model: vae.image_size 64 gives .* set vae.image_size to 88"):
        load_train_config("tiny-sim", ["model.vision.patch_size=14"])  # 160 / 14: the grid needs a matching VAE
    with pytest.raises(ConfigError, match=r"model.preset: 'tinyy' is not one of paper, tiny; did you mean 'tiny'"):
        load_train_config("tiny-sim", ["model.preset=tinyy"])
    with pytest.raises(ConfigError, match=r"ambiguous; use one of: model.vision.image_size, model.vae.image_size"):
        apply_overrides({}, ["image_size=160"])


def test_print_config_shows_the_resolved_model_and_reloads_unchanged(tmp_path: Path, fake_dataset: Path) -> None:
    import yaml

    from reconvla_core.model import ReconVLAConfig
    from reconvla_core.train.config import to_yaml

    config = load_train_config("tiny-sim", ["model.recon_weight=0.5"], data=[str(fake_dataset)])
    proc = subprocess.run([sys.executable, "-m", "reconvla_core.cli.main", "train", "--config", "tiny-sim",
                           "--data", str(fake_dataset), "model.recon_weight=0.5", "--print-config"],
                          capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    printed = yaml.safe_load(proc.stdout)
    assert printed["model"] == yaml.safe_load(to_yaml(config))["model"]
    resolved = ReconVLAConfig.from_preset("tiny", **{k: v for k, v in printed["model"].items() if k != "preset"})
    assert resolved == config.model.resolve()  # every field, nested ones included, not only the overrides
    assert printed["model"]["recon_weight"] == 0.5 and printed["model"]["vision"]["image_size"] == 160
    assert printed["model"]["llm"]["vocab_size"] == 520 and "options" not in printed["model"]
    path = tmp_path / "train_config.yaml"
    path.write_text(proc.stdout)
    assert load_train_config(str(path)).model.resolve() == config.model.resolve()


def test_shipped_recipes_use_the_flat_model_section(caplog) -> None:
    with caplog.at_level("WARNING", logger="reconvla_core.train.config"):
        configs = {name: load_train_config(name) for name in available_configs()}
    assert "deprecated" not in caplog.text
    tiny = configs["tiny-sim"].model
    assert tiny.preset == "tiny" and tiny.overrides["action_head"] == "parallel" and tiny.overrides["train_vision"]
    assert configs["paper-pretrain"].model.resolve().llm.hidden_size == 3584


def test_train_config_of_an_earlier_run_with_model_options_still_loads(caplog) -> None:
    """train_config.yaml files written before the typed model section hold model.options (this one is
    the train_config.yaml of the checkpoint shipped until 2026-12-03)."""
    path = Path(__file__).parent / "data" / "train_config_with_model_options.yaml"
    assert "options" in yaml_model(path)
    caplog.clear()
    with caplog.at_level("WARNING", logger="reconvla_core.train.config"):
        old = load_train_config(str(path))
    resolved = old.model.resolve()
    assert resolved.action_head == "parallel" and resolved.train_vision is True
    assert resolved.spatial_keypoints == 8 and resolved.action_mode == "delta" and resolved.vision.image_size == 112
    deprecations = [r.getMessage() for r in caplog.records if "model.options is deprecated" in r.getMessage()]
    assert len(deprecations) == 1 and "\n" not in deprecations[0] and "action_head" in deprecations[0]


def test_user_yaml_with_model_options_still_loads(tmp_path: Path, caplog) -> None:
    path = tmp_path / "old.yaml"
    path.write_text("extends: tiny-sim\nmodel:\n  recon_target: none\n  options:\n    train_vision: false\n"
                    "    recon_weight: 0.25\n    vision: {feature_layer: -1}\n")
    with caplog.at_level("WARNING", logger="reconvla_core.train.config"):
        config = load_train_config(str(path), ["model.recon_weight=0.5"])
    model = config.model.resolve()
    assert model.recon_target == "none" and model.train_vision is False and model.vision.feature_layer == -1
    assert model.recon_weight == 0.5  # a key=value override comes after the file's options
    assert model.action_head == "parallel"  # the rest of tiny-sim's model fields are kept
    assert "model.options is deprecated: put its fields (train_vision, recon_weight, vision)" in caplog.text
    with pytest.raises(ConfigError, match=r"unknown config key 'model.train_visoin'; did you mean 'train_vision'"):
        load_train_config("tiny-sim", ["model.options.train_visoin=true"])  # still checked, as a model field


def test_a_train_config_with_the_removed_gripper_point_weight_loads_only_with_it_off(caplog) -> None:
    with caplog.at_level("WARNING", logger="reconvla_core.train.config"):
        config = load_train_config("tiny-sim", ["model.gripper_point_weight=0.0"])  # as --print-config wrote it
    assert "model: gripper_point_weight dropped (removed research options)" in caplog.text
    assert "gripper_point_weight" not in config.model.overrides
    assert not hasattr(config.model.resolve(), "gripper_point_weight")
    with pytest.raises(ConfigError, match=r"model: gripper_point_weight=1.0: this option was removed"):
        load_train_config("tiny-sim", ["model.gripper_point_weight=1.0"])


def yaml_model(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())["model"]


def test_accelerate_configs_are_valid_accelerate_files() -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    expected = {"single_gpu": "NO", "ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero2": "DEEPSPEED",
                "deepspeed_zero3": "DEEPSPEED"}
    assert {p.stem for p in ACCELERATE_CONFIG_DIR.glob("*.yaml")} == set(expected)
    for name, kind in expected.items():
        loaded = load_config_from_file(str(accelerate_config(name)))
        assert loaded.distributed_type.value == kind, name
    assert load_config_from_file(str(accelerate_config("deepspeed_zero3"))).deepspeed_config["zero_stage"] == 3
    assert load_config_from_file(str(accelerate_config("deepspeed_zero2"))).deepspeed_config["zero_stage"] == 2


def test_cli_reports_config_errors_before_importing_torch(tmp_path: Path) -> None:
    """One line on stderr, exit code 2, and fast: torch is never imported for a config error."""
    code = ("import sys; from reconvla_core.cli.main import main; rc = main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "train", "--config", "tiny-sim", "--data",
                           str(tmp_path / "missing"), "optim.lrr=1"], capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("reconvla train: error: unknown config key 'optim.lrr'")
    proc = subprocess.run([sys.executable, "-c", code, "train", "--data", str(tmp_path / "missing")],
                          capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    assert proc.stdout == ""


def test_cli_takes_overrides_anywhere_on_the_line() -> None:
    from reconvla_core.cli.main import build_parser
    from reconvla_core.train.cli import split_data_and_overrides

    args = build_parser().parse_args(["train", "--data", "a", "b:0.5", "lr=1e-3", "--out", "o",
                                      "train.max_steps=5", "--json", "train.mixed_precision=no"])
    data, overrides = split_data_and_overrides(args.data, args.overrides)
    assert data == ["a", "b:0.5"] and args.json and str(args.out) == "o"
    assert overrides == ["lr=1e-3", "train.max_steps=5", "train.mixed_precision=no"]
