"""Settings in one place (unigap/config.py): each dataclass rejects a bad setting naming its option,
and never an old run's settings."""

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from unigap.config import FIRST, JudgeSettings, LoopConfig, Sampling, TrainConfig

ROOT = Path(__file__).parents[2]


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: TrainConfig(und_every=0), "--und-every must be >= 1 (1: the replay joins every batch), not 0"),
        (lambda: TrainConfig(und_flawed=2, und_replay=0.0), "--und-flawed"),
        (lambda: TrainConfig(und_batch=4), "--und-batch must be >= 8"),
        (lambda: TrainConfig(modules="all"), "--modules must be one of lm, lm+head"),
        (lambda: LoopConfig(focus=0.0), "--focus is an acceptance rate in (0, 1]"),
        (lambda: LoopConfig(balance=True, max_per_prompt=0), "--balance needs --max-per-prompt >= 1"),
        (lambda: LoopConfig(min_accept_rate=0.5, focus=0.5), "--min-accept-rate"),
        (lambda: LoopConfig(method="ppo"), "--method must be one of"),
        (lambda: LoopConfig(judge_mode="vibes"), "--mode must be one of"),
        (lambda: LoopConfig(cfg=0.0), "--cfg"),
        (lambda: Sampling(best_of=0), "--best-of must be at least 1"),
        (lambda: Sampling(temperature=-1.0), "--temperature must be >= 0"),
        (lambda: JudgeSettings(threshold=1.0), "--threshold is a probability in (0, 1)"),
    ],
)
def test_the_dataclasses_reject_bad_settings_naming_the_option(make, words):
    with pytest.raises(ValueError) as e:
        make()
    assert words in str(e.value)


def test_old_runs_settings_still_load():
    """Validation never rejects what a run wrote: every loop JSON and job record in results/ reads back,
    and the first defaults (what a JSON without a setting meant) are valid settings."""
    LoopConfig.from_dict({})
    assert asdict(LoopConfig.from_dict({}))["train"]["epochs"] == FIRST["train"]["epochs"]
    found = 0
    for path in (ROOT / "results").rglob("*.json"):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and isinstance(data.get("config"), dict) and "train" in data["config"]:
            LoopConfig.from_dict(data["config"])
            found += 1
    assert found > 10
