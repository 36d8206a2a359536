"""`reconvla demo` end to end at the smallest size: every stage runs and the report is complete."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_demo_smallest_run_writes_a_complete_report(tmp_path):
    out = tmp_path / "demo"
    command = [str(Path(sys.executable).parent / "reconvla"), "demo", "--quick", "--episodes", "2",
               "--train-steps", "2", "--chains", "1", "--deploy-seconds", "3", "--out", str(out), "--json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)  # --json: exactly one JSON object on stdout
    assert report == json.loads((out / "report.json").read_text())
    for key in ("avg_len", "success_by_position", "random_avg_len", "train_steps", "minutes"):
        assert key in report, key
    assert len(report["success_by_position"]) == 5 and 0.0 <= report["avg_len"] <= 5.0
    assert report["train_steps"] == 2 and report["quick"] is True
    assert report["record"]["episodes"] == 2
    assert report["dataset"]["episodes"] >= 1  # only successful episodes become training data
    assert report["deploy"]["chunks"] >= 1 and report["deploy"]["commands"] >= 1
    assert "smoke run" in (out / "report.md").read_text()
    assert (out / "success_by_position.png").is_file() and (out / "loss_curves.png").is_file()
    assert sorted(p.name for p in (out / "bags" / "ros").iterdir())  # rosbag2 directories from teleop_recorder
    assert "report:" in result.stderr and "random policy" in result.stderr
