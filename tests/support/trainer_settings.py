"""Trainer settings for tests that exercise the trainer itself."""

from unigap.config import TrainConfig, first_defaults


def first_train(**changes) -> TrainConfig:
    """TrainConfig with the first defaults (config.FIRST: no replays, the language model only,
    lr 1e-4, 2 epochs), which the trainer tests were written for, and `changes`."""
    return TrainConfig(**{**first_defaults()["train"], **changes})
