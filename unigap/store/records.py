"""Typed things in the store, built on the five backend methods: JSON, arrays, checkpoints."""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from unigap.store.base import Store, sha256


def put_json(store: Store, obj) -> str:
    return store.put_object(json.dumps(obj, sort_keys=True).encode())


def get_json(store: Store, sha: str):
    return json.loads(store.get_object(sha))


def put_arrays(store: Store, **arrays: np.ndarray) -> str:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return store.put_object(buf.getvalue())


def get_arrays(store: Store, sha: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(store.get_object(sha)), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def put_checkpoint(store: Store, folder: str | Path) -> str:
    """Store every file of a save_pretrained folder; the checkpoint's address is its file index's."""
    folder = Path(folder)
    index = {p.name: store.put_object(p.read_bytes()) for p in sorted(folder.iterdir()) if p.is_file()}
    return put_json(store, {"files": index})


def default_checkpoint_cache() -> Path:
    """Where fetched checkpoints go unless told otherwise: per user (`$XDG_CACHE_HOME/unigap/checkpoints`,
    else `~/.cache/unigap/checkpoints`), never a folder other users of the machine can write."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "unigap" / "checkpoints"


def _whole(folder: Path, index: dict[str, str]) -> bool:
    """Whether `folder` holds every file of `index` with the store's checksum."""
    try:
        return all(sha256((folder / name).read_bytes()) == sha for name, sha in index.items())
    except OSError:  # a file missing or unreadable
        return False


def fetch_checkpoint(store: Store, ref: str, cache: str | Path) -> Path:
    """Materialise a checkpoint under `cache/<ref>` and return its folder.

    Safe for several processes (or threads) fetching the same checkpoint into one cache at once:
    each writes its own temporary folder and renames it into place; one that loses the race
    accepts the folder the other put there. A folder already in the cache is used only if every
    file matches the store's checksum; otherwise it is fetched again and replaced."""
    dest = Path(cache) / ref
    index = get_json(store, ref)["files"]
    if dest.is_dir() and _whole(dest, index):
        return dest
    Path(cache).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=f".{ref[:12]}."))
    try:
        for name, sha in index.items():
            (tmp / name).write_bytes(store.get_object(sha))
        for _ in range(3):  # each try either places ours or finds a whole one; a damaged one is moved aside
            try:
                tmp.rename(dest)
                return dest
            except OSError:  # dest appeared meanwhile (ENOTEMPTY / EEXIST)
                if _whole(dest, index):
                    return dest
                aside = Path(tempfile.mkdtemp(dir=cache, prefix=f".{ref[:12]}.damaged."))
                try:
                    dest.rename(aside / "old")
                except OSError:  # someone else moved it first
                    pass
                shutil.rmtree(aside, ignore_errors=True)
        raise OSError(f"checkpoint {ref} could not be placed in {cache}: its folder keeps changing under this process")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after a successful rename; a leftover otherwise


def put_record_json(store: Store, key: str, obj) -> None:
    store.put_record(key, json.dumps(obj, indent=1, sort_keys=True).encode())


def get_record_json(store: Store, key: str):
    data = store.get_record(key)
    return None if data is None else json.loads(data)


# The model the services should serve: written by a promotion, followed by every server replica
# (so a restarted or added replica serves the promoted model, not the one it was deployed with).
SERVING = "serving/current.json"


def set_serving(store: Store, checkpoint: str, **about) -> None:
    put_record_json(store, SERVING, {"checkpoint": checkpoint, **about})


def get_serving(store: Store) -> str | None:
    record = get_record_json(store, SERVING)
    return record["checkpoint"] if record else None
