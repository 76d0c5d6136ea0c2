"""Where the loop's model work runs: in this process, or behind services.

The loop asks a backend for three things by checkpoint reference: a generator (anything with
`sample`, `encode` and `image_size`, as `UnifiedModel` has), a judge (anything with `score` and
`image_size`, as `Judge` has), and the training of one round (a `TrainJob`). `LocalBackend` is the
one-machine default; pipelines/ provides one over the gRPC services and trainer jobs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from unigap.evaluate import make_judge
from unigap.model.adapter import UnifiedModel
from unigap.store.base import Store
from unigap.train.round import TrainJob, load_model, train_round


class Backend(Protocol):
    def generator(self, ref: str): ...

    def judge(self, ref: str, threshold: float): ...

    def train(self, job: TrainJob) -> tuple[str, list]: ...


class LocalBackend:
    """Models loaded from the store into this process, on `device` (the two most recent kept)."""

    def __init__(
        self,
        store: Store,
        cache: Path,
        judge_mode: str,
        progress: bool = True,
        log: Callable[[str], None] = print,
        device: str = "cpu",
    ):
        self.store, self.cache, self.judge_mode, self.progress, self.log = store, Path(cache), judge_mode, progress, log
        self.device = device
        self._models: OrderedDict[str, UnifiedModel] = OrderedDict()

    def generator(self, ref: str) -> UnifiedModel:
        if ref not in self._models:
            self._models[ref] = load_model(self.store, ref, self.cache, self.device)
            while len(self._models) > 2:
                self._models.popitem(last=False)
        self._models.move_to_end(ref)
        return self._models[ref]

    def judge(self, ref: str, threshold: float):
        return make_judge(self.generator(ref), self.judge_mode, threshold)

    def train(self, job: TrainJob) -> tuple[str, list]:
        return train_round(self.store, job, self.cache, self.progress, self.log, self.device)
