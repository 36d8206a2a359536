"""A recorder killed mid-episode (SIGKILL): ``reconvla bag recover`` restores what reached the disk,
and ``dataset build`` converts it. The writer is the recorder's own EpisodeBagWriter, in a real process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from data_synthetic import state_at

from reconvla_core.cli.main import main as cli_main
from reconvla_core.data.bag_reader import read_episode
from reconvla_core.data.recover import needs_recovery

pytestmark = pytest.mark.unit

RECORDER = """
import sys, time
from pathlib import Path
from data_synthetic import SEC, T0, action_at, gaze_at, image_at, state_at
from reconvla_core import interfaces as itf
from reconvla_core.data.bag_writer import EpisodeBagWriter

bag = EpisodeBagWriter(Path(sys.argv[1])).open()
bag.write_string(itf.INSTRUCTION_TOPIC, T0, "put the block in the bowl")
for i in range(100000):  # 10 Hz until killed
    stamp, t = T0 + i * SEC // 10, i / 10
    bag.write_image(itf.BASE_IMAGE_TOPIC, stamp, image_at(0, i, 120, 160))
    bag.write_image(itf.WRIST_IMAGE_TOPIC, stamp, image_at(1, i, 120, 160))
    bag.write_joint_state(itf.FOLLOWER_STATE_TOPIC, stamp, state_at(t))
    bag.write_joint_state(itf.LEADER_COMMAND_TOPIC, stamp, action_at(t))
    bag.write_gaze_box(stamp, gaze_at(i))
    time.sleep(0.002)
"""


def kill_recorder_mid_episode(bag: Path, min_bytes: int) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    process = subprocess.Popen([sys.executable, "-c", RECORDER, str(bag)], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        files = list(bag.glob("*.mcap"))
        if files and files[0].stat().st_size >= min_bytes:
            break
        time.sleep(0.01)
    assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)


def test_sigkilled_episode_is_recovered_and_builds(tmp_path, capsys):
    bag = tmp_path / "bags" / "episode_000000"
    kill_recorder_mid_episode(bag, min_bytes=4 << 20)
    (mcap,) = bag.glob("*.mcap")
    cut_size = mcap.stat().st_size
    assert not (bag / "metadata.yaml").exists() and needs_recovery(bag)
    # Without recovery the build cannot use it, and says what to do.
    rc = cli_main(["dataset", "build", "--bags", str(bag), "--out", str(tmp_path / "before"), "--json"])
    error = capsys.readouterr().err
    assert rc == 2 and "cut off" in error and f"reconvla bag recover {bag}" in error

    rc = cli_main(["bag", "recover", str(tmp_path / "bags"), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert rc == 0 and (result["recovered"], result["failed"]) == (1, 0)
    entry = result["bags"][0]
    assert entry["bag"] == bag.name and entry["messages"] > 0 and entry["seconds"] >= 2.0
    assert entry["bytes_recovered"] <= cut_size and entry["source_bytes"] == cut_size
    # The original file is kept beside the recovered one; a second run finds nothing to do.
    assert (bag / (mcap.name + ".truncated")).stat().st_size == cut_size
    rc = cli_main(["bag", "recover", str(bag), "--json"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["whole"] == 1

    # Every frame up to the last whole chunk is there, with its values; the episode is marked.
    episode = read_episode(bag)
    frames = episode.num_frames
    # (the last whole chunk may end inside a frame: its later topics went with the lost chunk)
    assert frames in (round(entry["seconds"] * 10), round(entry["seconds"] * 10) + 1)
    assert episode.dropped_frames == 0 and frames >= 20
    np.testing.assert_allclose(episode.state, np.stack([state_at(t) for t in episode.timestamps]), atol=1e-6)
    assert episode.info["interrupted"] is True and episode.info["recovered"] is True
    assert episode.success is False and episode.instruction == "put the block in the bowl"
    # Whole 1 MiB chunks of ~58 kB images: at most one chunk (~10 frames) was still in memory.
    per_topic = entry["topics"]
    assert per_topic["/reconvla/gaze_box"] >= per_topic["/camera/camera/color/image_raw"] - 1

    # A recovered episode is unsuccessful: converted only on request.
    rc = cli_main(["dataset", "build", "--bags", str(bag), "--out", str(tmp_path / "skipped"), "--json"])
    assert rc == 2 and "unsuccessful" in capsys.readouterr().err
    rc = cli_main(["dataset", "build", "--bags", str(bag), "--out", str(tmp_path / "ds"), "--include-unsuccessful",
                   "--json"])
    built = json.loads(capsys.readouterr().out)
    assert rc == 0 and (built["episodes"], built["frames"]) == (1, frames)


def test_build_recover_flag_recovers_on_the_fly(tmp_path, capsys, make_bag):
    make_bag("a_whole", seconds=1.0)
    bag = tmp_path / "bags" / "b_killed"
    kill_recorder_mid_episode(bag, min_bytes=3 << 20)
    rc = cli_main(["dataset", "build", "--bags", str(tmp_path / "bags"), "--out", str(tmp_path / "ds"),
                   "--include-unsuccessful", "--recover", "--json"])
    built = json.loads(capsys.readouterr().out)
    assert rc == 0 and built["episodes"] == 2
    outcomes = {b["bag"]: b for b in built["bags"]}
    assert outcomes["b_killed"]["outcome"] == "converted" and outcomes["b_killed"]["recovered"] is True
    assert outcomes["a_whole"]["outcome"] == "converted" and not outcomes["a_whole"].get("recovered")
    assert not needs_recovery(bag)


def test_recover_refuses_what_it_cannot_read(tmp_path, capsys):
    empty = tmp_path / "bags" / "garbage"
    empty.mkdir(parents=True)
    (empty / "garbage.mcap").write_bytes(os.urandom(2048))
    rc = cli_main(["bag", "recover", str(empty), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert rc == 2 and result["failed"] == 1 and "no whole message" in result["bags"][0]["reason"]
    assert (empty / "garbage.mcap").exists()  # nothing is deleted


def test_a_bag_cut_at_any_byte_recovers_a_prefix(tmp_path, make_bag):
    """Whatever byte the file ends at, recovery gives the messages of the whole chunks before it."""
    import shutil

    from rosbags.rosbag2 import Reader

    from reconvla_core.data.recover import RecoveryError, recover_bag

    source = make_bag("whole", seconds=3.0, height=120, width=160)
    with Reader(source) as reader:
        original = [(c.topic, stamp, bytes(raw)) for c, stamp, raw in reader.messages()]
    (mcap,) = source.glob("*.mcap")
    size = mcap.stat().st_size
    recovered_counts = []
    for cut in sorted({17, size // 7, size // 3, size // 2, size - 4096, size - 1, *range(1 << 20, size, 777_777)}):
        bag = tmp_path / f"cut_{cut}"
        shutil.copytree(source, bag)
        (bag / "metadata.yaml").unlink()
        with open(bag / mcap.name, "r+b") as handle:
            handle.truncate(cut)
        try:
            report = recover_bag(bag)
        except RecoveryError as error:  # before the first whole chunk: said, and nothing is touched
            assert "no whole message" in str(error) and (bag / mcap.name).stat().st_size == cut
            recovered_counts.append(0)
            continue
        with Reader(bag) as reader:
            messages = [(c.topic, stamp, bytes(raw)) for c, stamp, raw in reader.messages()
                        if c.topic != "/reconvla/episode_info"]
        recovered_counts.append(len(messages))
        assert report.messages == len(messages)
        original_without_info = [m for m in original if m[0] != "/reconvla/episode_info"]
        assert sorted(messages, key=lambda m: (m[1], m[0])) == sorted(
            original_without_info[: len(messages)], key=lambda m: (m[1], m[0]))
    assert recovered_counts == sorted(recovered_counts) and recovered_counts[-1] > 0
