"""`reconvla train` as a user runs it: 2 processes over gloo (accelerate launch), SIGTERM, --resume, --json."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from reconvla_core.train import train

pytestmark = [pytest.mark.unit, pytest.mark.slow]

RESULT_KEYS = {"steps", "final_loss", "final_action_loss", "final_recon_loss", "samples_per_s", "checkpoint"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict[str, str]:
    """CPU only (gloo), also on a machine with a GPU: the reference run below is on the CPU too."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""}


def _train_cli(dataset: Path, out: Path, overrides: list[str], *extra: str) -> list[str]:
    return ["-m", "reconvla_core.cli.main", "train", "--config", "tiny-sim", "--data", str(dataset), "--out",
            str(out), "--json", *extra, *overrides]


def test_two_processes_make_the_same_update_as_one(tiny_dataset: Path, make_config: Any, small_overrides: Any,
                                                  tmp_path: Path) -> None:
    """Global batch 4: 2 processes x 2 per device (DDP over gloo) vs 1 process x 2 per device x 2 accumulation."""
    # Dropout is 0 in the tiny model; data order and noise draws are functions of (seed, micro-batch).
    settings = {"train.max_steps": 2, "optim.lr": 1e-3, "eval.at_end": "true",
                "eval.max_samples": 4}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port())]
    proc = subprocess.run(launch + _train_cli(tiny_dataset, tmp_path / "ddp", small_overrides(**settings)),
                          capture_output=True, text=True, check=False, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(proc.stdout.strip().splitlines()) == 1  # one JSON object, from the main process only
    assert ddp["num_processes"] == 2 and ddp["steps"] == 2
    assert ddp["val"]["samples"] == 4 and "action_l1_joints_rad" in ddp["val"]  # validation across processes
    assert "2 per device x 2 processes x 1 accumulation" in proc.stderr

    single = train(make_config(tmp_path / "single", **settings))
    assert single["num_processes"] == 1
    assert single["final_loss"] == pytest.approx(ddp["final_loss"], rel=1e-5)
    assert single["val"]["action_l1_joints_rad"] == pytest.approx(ddp["val"]["action_l1_joints_rad"], rel=1e-5)
    for name in ("model.safetensors", "reconstruction.safetensors"):
        a = load_file(str(Path(single["checkpoint"]) / name))
        b = load_file(str(Path(ddp["checkpoint"]) / name))
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=lambda m, k=key: f"{k}: {m}")


def test_cli_sigterm_checkpoints_and_resume_finishes(tiny_dataset: Path, small_overrides: Any, tmp_path: Path) -> None:
    out = tmp_path / "run"
    overrides = small_overrides(**{"logging.every_steps": 1, "eval.at_end": "true", "eval.max_samples": 4,
                                   "logging.loss_curve": "true"})
    command = [sys.executable, *_train_cli(tiny_dataset, out, overrides, "--max-steps", "30")]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        metrics = out / "metrics.jsonl"
        deadline = time.monotonic() + 240
        while not (metrics.is_file() and metrics.read_text().strip()) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    stopped = json.loads(stdout)
    assert stopped["interrupted"] and 1 <= stopped["steps"] < 30
    assert Path(stopped["checkpoint"]).name == f"step-{stopped['steps']:07d}"
    assert "SIGTERM received: checkpointing at the end of this step" in stderr

    done = subprocess.run([sys.executable, *_train_cli(tiny_dataset, out, overrides, "--max-steps", "30", "--resume")],
                          capture_output=True, text=True, check=False, timeout=300, env=_env())
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert RESULT_KEYS <= set(result) and result["steps"] == 30 and not result["interrupted"]
    assert f"resumed from {stopped['checkpoint']} at step {stopped['steps']}" in done.stderr
    assert Path(result["checkpoint"]).name == "final" and Path(result["loss_curve"]).is_file()
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "train"]
    assert steps == list(range(1, 31))  # one continuous log across the interruption
