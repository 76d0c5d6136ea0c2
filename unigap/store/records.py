"""Typed things in the store, built on the five backend methods: JSON, arrays, checkpoints."""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from unigap.store.base import Store


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


def fetch_checkpoint(store: Store, ref: str, cache: str | Path) -> Path:
    """Materialise a checkpoint under `cache/<ref>` (verified, atomically) and return its folder."""
    dest = Path(cache) / ref
    if dest.is_dir():
        return dest
    index = get_json(store, ref)["files"]
    Path(cache).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=f".{ref[:12]}."))
    try:
        for name, sha in index.items():
            (tmp / name).write_bytes(store.get_object(sha))
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


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
