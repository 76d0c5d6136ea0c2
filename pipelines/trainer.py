"""The trainer job: `python -m pipelines.trainer --store URL --job KEY [--cache DIR] [--checkpoint-every N]
[--shard fsdp]`.

Reads the job record `KEY/job.json` (a `TrainJob` as JSON), runs `train_round`, and writes
`KEY/result.json` = {"checkpoint": ref, "log": [...]}. A job whose result exists is done: a rerun
exits at once, so a retried pod or a resubmitted job never trains twice. Under torchrun every rank
trains its share of each batch (DDP); only rank 0 writes to the store. With `--shard fsdp`
(UNIGAP_TRAINER_SHARD) the trained weights, their gradients and AdamW's moments are sharded over the
ranks instead of copied on each (FSDP2), for a model too big to train on one device; rank 0 gathers
the weights and writes the whole checkpoint. A sharded job takes no training states: a killed one
trains again from the start.

Every N optimizer steps (default 50, UNIGAP_CHECKPOINT_EVERY; 0: never) rank 0 saves the training
state to the store and points `KEY/state.json` at it. A job killed mid-training (a pod evicted, a
node lost) is simply run again: every rank of the rerun loads that state and makes exactly the
updates the uninterrupted job would have made after it. The state record stays once the result is
written (a few hundred bytes; the store deletes nothing, and a finished job never reads it).

Exit status: 0 done, 2 bad input (one line on stderr), 1 training failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from contextlib import contextmanager, nullcontext
from pathlib import Path

from unigap.store import StoreError, open_store
from unigap.store import records as rec
from unigap.store.base import Store, sha256


def job_record(key: str) -> str:
    return f"{key}/job.json"


def result_record(key: str) -> str:
    return f"{key}/result.json"


def state_record(key: str) -> str:
    return f"{key}/state.json"


CHECKPOINT_EVERY = 50  # optimizer steps between training states: a few seconds of loss at most, a small write each


class BadInput(Exception):
    """Reported as one line with exit status 2."""


class _ReadOnly:
    """The store as ranks other than 0 see it: reads go through, objects are addressed but not
    written (the checkpoint rank 0 puts is the same model), records are not written."""

    def __init__(self, store: Store):
        self._store = store

    def __getattr__(self, name):
        return getattr(self._store, name)

    def put_object(self, data: bytes) -> str:
        return sha256(data)

    def put_record(self, key: str, data: bytes) -> None:
        pass

    def delete_object(self, sha: str) -> None:
        pass


def read_job(store: Store, key: str):
    try:
        spec = rec.get_record_json(store, job_record(key))
    except ValueError as e:
        raise BadInput(f"job record {job_record(key)} is not JSON ({e})") from None
    if spec is None:
        raise BadInput(f"no job record {job_record(key)} in the store")
    from unigap.train.round import TrainJob  # torch: loaded once there is a job to run

    try:
        job = TrainJob(**spec)
        job.config  # noqa: B018 -- the loop settings must parse too
    except TypeError as e:
        raise BadInput(f"job record {job_record(key)} is not a TrainJob ({e})") from None
    except KeyError as e:
        raise BadInput(f"job record {job_record(key)} is not a TrainJob (no {e} in its loop settings)") from None
    return job


def check_shardable(job) -> None:
    """A sharded trainer trains full weights, without a curriculum or a regulariser (see
    unigap.train.trainer._train): refused before any model is loaded."""
    cfg = job.config
    if cfg.train.lora_rank > 0:
        raise BadInput("--shard fsdp trains full weights: LoRA (lora_rank > 0) trains few enough to need no sharding")
    if cfg.method.startswith("c-"):
        raise BadInput(f"--shard fsdp does not run the curriculum's replay ({cfg.method}): use sft or dpo")
    if cfg.train.regularised:
        raise BadInput(
            "--shard fsdp runs without the understanding anchor and the replays "
            "(--und-anchor, --und-replay, --gen-replay 0)"
        )


@contextmanager
def distributed():
    """torch.distributed from torchrun's environment (gloo on CPU, nccl for CUDA tensors), or
    nothing when run as a plain process. Yields (rank, local rank, world size)."""
    import torch
    import torch.distributed as dist

    if "WORLD_SIZE" not in os.environ:
        yield 0, 0, 1
        return
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available() and local_rank < torch.cuda.device_count():
        torch.cuda.set_device(local_rank)  # one GPU per rank (NCCL allows no sharing)
    # CUDA tensors reduce over NCCL; CPU ones (a model held on the CPU) over gloo.
    dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    try:
        yield dist.get_rank(), local_rank, dist.get_world_size()
    finally:
        dist.destroy_process_group()


def train(
    store: Store, key: str, job, cache: Path, log, checkpoint_every: int = CHECKPOINT_EVERY, shard: str = "none"
) -> None:
    import torch
    import torch.distributed as dist

    from unigap.progress import quiet_transformers_in_logs
    from unigap.train.round import drop_state, train_round

    quiet_transformers_in_logs()  # keeps the job's log to lines (its tail is what a failure shows)
    with distributed() as (rank, local_rank, world):
        if world > 1:
            # One rank per node materialises the base model; the others then find it in the cache
            # rather than racing to rename their copies into the same folder.
            if local_rank == 0:
                rec.fetch_checkpoint(store, job.base, cache)
            dist.barrier()
        sharded = shard == "fsdp" and world > 1
        how = f"{job.config.method}, sharded" if sharded else job.config.method
        log(f"job {key}: rank {rank}/{world} trains round {job.round} ({how})")
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
        # Every rank resumes from the same state; only rank 0 takes new ones. A sharded job takes none.
        ref, train_log = train_round(
            store if rank == 0 else _ReadOnly(store),
            job,
            cache,
            progress=False,
            log=log,
            device=device,
            state_record=None if sharded else state_record(key),
            checkpoint_every=checkpoint_every if rank == 0 and not sharded else 0,
            shard=shard,
        )
        if rank == 0:
            rec.put_record_json(store, result_record(key), {"checkpoint": ref, "log": train_log})
            drop_state(store, state_record(key))
            log(f"job {key}: done, checkpoint {ref[:12]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.trainer", description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="a directory or s3://bucket[/prefix] (UNIGAP_S3_* settings)")
    parser.add_argument("--job", required=True, help="the job's key in the store (its record is KEY/job.json)")
    parser.add_argument(
        "--cache",
        default=os.environ.get("UNIGAP_CACHE_DIR"),
        help="folder for fetched checkpoints (default: UNIGAP_CACHE_DIR, else a temporary folder)",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        metavar="N",
        help=f"save the training state to the store every N optimizer steps, 0 never (default: UNIGAP_CHECKPOINT_EVERY, else {CHECKPOINT_EVERY})",
    )
    parser.add_argument(
        "--shard",
        default=None,
        metavar="{none,fsdp}",
        help="fsdp: shard the trained weights, gradients and optimizer state over the torchrun "
        "processes (default: UNIGAP_TRAINER_SHARD, else none)",
    )
    args = parser.parse_args(argv)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        store = open_store(args.store)
        if rec.get_record_json(store, result_record(args.job)) is not None:
            log(f"job {args.job}: done already")
            return 0
        every = args.checkpoint_every
        if every is None:
            try:
                every = int(os.environ.get("UNIGAP_CHECKPOINT_EVERY") or CHECKPOINT_EVERY)
            except ValueError:
                raise BadInput(
                    f"UNIGAP_CHECKPOINT_EVERY must be a whole number, not {os.environ['UNIGAP_CHECKPOINT_EVERY']!r}"
                ) from None
        if every < 0:
            raise BadInput(f"--checkpoint-every must be >= 0, not {every}")
        job = read_job(store, args.job)
        from unigap.train.trainer import SHARDS  # torch: loaded by read_job already

        shard = args.shard or os.environ.get("UNIGAP_TRAINER_SHARD") or "none"
        if shard not in SHARDS:
            raise BadInput(f"--shard (or UNIGAP_TRAINER_SHARD) must be one of {', '.join(SHARDS)}, not {shard!r}")
        if shard == "fsdp":
            check_shardable(job)
    except (BadInput, ValueError, StoreError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # A training failure is not caught: its traceback ends the job's log and the status is 1.
    with nullcontext(args.cache) if args.cache else tempfile.TemporaryDirectory(prefix="unigap-cache-") as cache:
        train(store, args.job, job, Path(cache), log, every, shard)
    return 0


if __name__ == "__main__":
    sys.exit(main())
