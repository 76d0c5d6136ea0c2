"""The model a server serves, other checkpoints asked for by name, and hot reloads.

A checkpoint reference is a store reference (64 hex digits, fetched into `cache_dir`) or a folder
path the server can read. A request takes the `Loaded` object once and keeps it, so a reload
(which loads the new model completely before swapping) never changes the model under it.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.api import model_pb2
from services.common.server import log_event
from services.common.validation import Invalid, NotFound
from unigap.model.adapter import UnifiedModel
from unigap.store import StoreError
from unigap.store import open_store as _open_store
from unigap.store.base import is_ref
from unigap.store.records import fetch_checkpoint, get_serving


@dataclass(frozen=True, eq=False)  # identity equality: one Loaded per load
class Loaded:
    ref: str
    model: UnifiedModel
    parameters: int


def open_store(url: str):
    try:
        return _open_store(url)
    except (ValueError, StoreError) as e:
        raise Invalid("store", str(e)) from None


class ModelHolder:
    def __init__(
        self,
        ref: str,
        settings,
        judge_mode: str = "",
        lru_size: int = 2,
        loader: Callable[[Path], UnifiedModel] = UnifiedModel.load,
        defaults: model_pb2.RequestDefaults | None = None,
    ):
        """Loads `ref` now (blocking): a server starts only with a model it can serve. `defaults`:
        what the server uses for its requests' unset fields, reported by `info()`."""
        self.settings, self.judge_mode, self.lru_size, self.loader = settings, judge_mode, lru_size, loader
        self.defaults = defaults
        self._store = None
        self.generation = 0
        if settings.follow_s:
            ref = self.promoted() or ref  # a replica started after a promotion serves the promoted model
        self.current = self._load(ref)
        self._others: OrderedDict[str, Loaded] = OrderedDict()
        self._loading: dict[str, asyncio.Task] = {}
        self._reload_lock = asyncio.Lock()

    # -------------------------------------------------------------------- resolving and loading
    def resolve(self, ref: str) -> Path:
        """A reference -> a local save_pretrained folder (fetching from the store when needed)."""
        if is_ref(ref):
            if not self.settings.store:
                raise Invalid(
                    "checkpoint", f"{ref} is a store reference but this server has no store (set UNIGAP_STORE)"
                )
            try:
                return fetch_checkpoint(self.store(), ref, self.settings.cache_dir)
            except KeyError:
                raise NotFound("checkpoint", f"{ref} is not in the store {self.settings.store}") from None
        path = Path(ref)
        if not ref or not path.is_dir():
            raise Invalid(
                "checkpoint", f"{ref!r} is neither a store reference (64 hex digits) nor a folder on the server"
            )
        if not (path / "config.json").is_file():
            raise Invalid("checkpoint", f"{ref} has no config.json (expected a save_pretrained folder)")
        return path

    def store(self):
        if self._store is None:
            self._store = open_store(self.settings.store)
        return self._store

    def promoted(self) -> str | None:
        """The checkpoint the loop last promoted (the store's serving record), if any."""
        return get_serving(self.store())

    async def follow(self, interval_s: float) -> None:
        """Reload whenever the serving record names another checkpoint (run as a task)."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                ref = await asyncio.to_thread(self.promoted)
                if ref and ref != self.current.ref:
                    await self.reload(ref)
                    log_event("followed", checkpoint=ref, generation=self.generation)
            except Exception as e:  # the store down for a while: keep serving, try again later
                log_event("follow_failed", error=str(e).splitlines()[0] if str(e) else type(e).__name__)

    def _load(self, ref: str) -> Loaded:
        model = self.loader(self.resolve(ref))
        return Loaded(ref, model, sum(p.numel() for p in model.model.parameters()))

    async def _load_once(self, ref: str) -> Loaded:
        """Load in a worker thread (the event loop keeps serving); concurrent asks share one load."""
        if ref not in self._loading:
            self._loading[ref] = asyncio.ensure_future(asyncio.to_thread(self._load, ref))
            self._loading[ref].add_done_callback(lambda _: self._loading.pop(ref, None))
        return await asyncio.shield(self._loading[ref])

    # -------------------------------------------------------------------- serving
    async def get(self, ref: str = "") -> Loaded:
        """The served model ("" or its own ref), or another checkpoint, kept in a small LRU."""
        current = self.current
        if not ref or ref == current.ref:
            return current
        if ref in self._others:
            self._others.move_to_end(ref)
            return self._others[ref]
        loaded = await self._load_once(ref)
        self._others[ref] = loaded
        self._others.move_to_end(ref)
        while len(self._others) > self.lru_size:
            self._others.popitem(last=False)
        return loaded

    async def reload(self, ref: str) -> model_pb2.ModelInfo:
        """Serve `ref` from now on; requests holding the old model finish on it."""
        async with self._reload_lock:
            loaded = self._others.pop(ref, None) or await self._load_once(ref)
            self.current = loaded
            self.generation += 1
        return self.info()

    def info(self) -> model_pb2.ModelInfo:
        c = self.current
        return model_pb2.ModelInfo(
            checkpoint=c.ref,
            parameters=c.parameters,
            image_size=c.model.image_size,
            image_tokens=c.model.num_image_tokens,
            generation=self.generation,
            judge_mode=self.judge_mode,
            defaults=self.defaults,
        )


def follow_promotions(holder: ModelHolder, running) -> None:
    """With `follow_s` set, the server reloads on every promotion for as long as it runs."""
    if holder.settings.follow_s:
        task = asyncio.ensure_future(holder.follow(holder.settings.follow_s))
        running.on_stop(task.cancel)
