"""The unified-model adapter (transformers Janus) and the model's own judge."""

from unigap.model.adapter import Samples, UnifiedModel
from unigap.model.judge import MODES, Judge, Judgment, parse_answer

__all__ = ["MODES", "Judge", "Judgment", "Samples", "UnifiedModel", "parse_answer"]
