"""Progress bars: a log (not a terminal) gets one line per finished bar, never carriage returns."""

import copy
import os

import numpy as np
from support.trainer_settings import first_train

from unigap import progress
from unigap.train import trainer


def test_a_bar_in_a_log_is_one_line_with_its_count_and_last_figures(capsys):
    b = progress.bar(range(5), "SFT epoch 2", initial=3, total=8)
    for i in b:
        b.set_postfix({"loss": 0.5}, codes=i)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert err.count("\n") == 1
    assert err.startswith("SFT epoch 2: 8/8 in ") and err.rstrip().endswith("(loss=0.5, codes=4)")


def test_a_disabled_bar_says_nothing_and_still_takes_figures(capsys):
    b = progress.bar(iter([1, 2]), "sample and judge", enabled=False)
    assert list(b) == [1, 2]
    b.set_postfix(loss=1.0)
    assert capsys.readouterr().err == ""


def test_training_in_a_log_writes_a_line_per_epoch(tiny_random, capsys):
    rows = [("a red circle", np.random.default_rng(0).integers(0, 64, 64)) for _ in range(4)]
    trainer.train_sft(copy.deepcopy(tiny_random), rows, first_train(epochs=2, batch=2), progress=True)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" in ")[0] for line in lines] == ["SFT epoch 1: 2/2", "SFT epoch 2: 2/2"]


def test_transformers_bars_are_switched_off_in_a_log(monkeypatch):
    from transformers.utils import logging as hf_logging

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    try:
        progress.quiet_transformers_in_logs()
        assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
        assert not hf_logging.is_progress_bar_enabled()
    finally:
        os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
        hf_logging.enable_progress_bar()
