"""``bench/agent_run.py``: the config it writes is a valid pole, and rates come from whole
intervals only."""

from __future__ import annotations

import json
from pathlib import Path

from agent.settings.schema import load_config
from bench.agent_run import INTERVAL_S, rates_from_aggregates, write_config
from tests.conftest import SIMNET


def test_the_bench_config_is_n_unpaced_looping_file_cameras(sim_clip: tuple[Path, dict],
                                                            tmp_path: Path) -> None:
    video, gt = sim_clip
    cfg = load_config(write_config(tmp_path, video, SIMNET, ",".join(map(str, gt["line"])), 4))
    assert [c.name for c in cfg.cameras] == ["cam1", "cam2", "cam3", "cam4"]
    for c in cfg.cameras:
        assert c.source.kind == "file" and c.source.loop and not c.source.realtime
        assert c.detector.threads == 1 and not c.gating.motion
    assert cfg.mqtt is None and cfg.lighting is None
    assert cfg.aggregates.interval_s == INTERVAL_S


def test_rates_use_whole_intervals_only(tmp_path: Path) -> None:
    recs = [{"camera": "cam1", "partial": True, "frames_analysed": 999},
            {"camera": "cam1", "partial": False, "frames_analysed": 300},
            {"camera": "cam1", "partial": False, "frames_analysed": 340},
            {"camera": "cam2", "partial": True, "frames_analysed": 50}]
    path = tmp_path / "agg.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert rates_from_aggregates(path, 2) == {"cam1": 640 / (2 * INTERVAL_S)}
