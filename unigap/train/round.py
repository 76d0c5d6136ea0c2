"""One round's training as a job: base checkpoint + round data in the store -> a new checkpoint.

The loop runs it in-process; the trainer entrypoint (pipelines/trainer.py) runs the same function
in a subprocess, under torchrun or as a Kubernetes Job. Everything it needs is in the store and
the job's JSON, so any machine that reaches the store can run it.

A job killed mid-training loses at most `checkpoint_every` steps: its training state goes to the
STORE (an object, torch.save'd, named by a small record such as `KEY/state.json`), not to the
pod's disk, so the rerun of the job, on any machine, continues from it.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist

from unigap.candidates import Sampling, sample_and_judge
from unigap.config import LoopConfig, TrainConfig
from unigap.evaluate import competitors, make_judge
from unigap.model.adapter import UnifiedModel
from unigap.model.judge import Judge
from unigap.pretrain import Data, PretrainConfig, generation_loss, understanding_loss, understanding_splits
from unigap.store import records as rec
from unigap.store.base import Store
from unigap.train.data import Candidates, RoundData, get_round_data, split_for
from unigap.train.losses import understanding_anchor
from unigap.train.trainer import Anchor, full_state_dict, sequence_logps, train_dpo, train_sft


@dataclass
class TrainJob:
    base: str  # checkpoint reference of the pre-round model
    data: str  # the round's RoundData reference
    loop: dict  # the LoopConfig, as a dict (JSON)
    round: int

    @property
    def config(self) -> LoopConfig:
        return LoopConfig.from_dict(self.loop)


def collect(generator, judge, prompts: list[str], cfg: LoopConfig, seed: int, progress: bool = True) -> Candidates:
    """Sample the loop's candidates and judge them; canonical tokens are decode -> re-encode."""
    s = Sampling(n=cfg.n, seed=seed, cfg=cfg.cfg, temperature=cfg.temperature)
    res = sample_and_judge(generator, judge, prompts, s, progress)
    tokens = np.asarray(generator.encode(res.images)) if cfg.canonical else res.tokens
    return Candidates(res.prompts, tokens, res.p_yes, res.accepted)


def put_state(store: Store, record: str, state: dict) -> str:
    """Store a training state (an object) and point `record` at it; returns the object's address.

    The object is written before the record, so a record always names a whole state; the state it
    named before is deleted after, so a job keeps one state (about three copies of the trained
    weights), not one per `checkpoint_every` steps."""
    buf = io.BytesIO()
    torch.save(state, buf)
    sha = store.put_object(buf.getvalue())
    before = rec.get_record_json(store, record)
    rec.put_record_json(
        store,
        record,
        {
            "state": sha,
            "kind": state["run"]["kind"],
            "step": state["step"],
            "epoch": state["epoch"] + 1,
            "position": state["position"],
        },
    )
    if before is not None and before.get("state") not in (None, sha):
        store.delete_object(before["state"])
    return sha


def drop_state(store: Store, record: str) -> None:
    """Delete the state `record` names once its job is done (its result is stored): nothing will
    resume it. The record stays, naming no state."""
    before = rec.get_record_json(store, record)
    if before is not None and before.get("state") is not None:
        rec.put_record_json(store, record, {**before, "state": None})
        store.delete_object(before["state"])


def get_state(store: Store, record: str) -> tuple[dict, str] | None:
    """The training state `record` names and its address, or None when there is none."""
    pointer = rec.get_record_json(store, record)
    if pointer is None or pointer.get("state") is None:
        return None
    return torch.load(io.BytesIO(store.get_object(pointer["state"])), map_location="cpu", weights_only=True), pointer[
        "state"
    ]


def load_model(store: Store, ref: str, cache: Path, device: str = "cpu") -> UnifiedModel:
    return UnifiedModel.load(rec.fetch_checkpoint(store, ref, cache), device=device)


ANCHOR_IMAGES = 8  # images of each batch the understanding anchor looks at (its cost grows with them)


def understanding_anchor_loss(um: UnifiedModel, reference: UnifiedModel) -> Anchor:
    """The anchor the trainer adds: the likelihood judge's caption distributions on (up to
    ANCHOR_IMAGES of) the batch's images, the policy's against the frozen pre-round model's.
    A sample's image and frozen distribution never change, so each is computed once, the first
    time the sample is seen, not again in every epoch."""
    policy = Judge(um, "likelihood", competitors=competitors)
    frozen = Judge(reference, "likelihood", competitors=competitors)
    seen: dict[tuple[str, bytes], tuple[np.ndarray, torch.Tensor]] = {}  # (prompt, tokens) -> (image, frozen log-probs)

    def anchor(prompts: list[str], tokens: torch.Tensor) -> torch.Tensor:
        prompts, tokens = prompts[:ANCHOR_IMAGES], tokens[:ANCHOR_IMAGES]
        keys = [(p, t.cpu().numpy().tobytes()) for p, t in zip(prompts, tokens)]
        new = [i for i, k in enumerate(keys) if k not in seen]
        if new:
            images = reference.decode(tokens[new])
            with torch.no_grad():
                ref = frozen.caption_logprobs(images, [prompts[i] for i in new])
            seen.update((keys[i], (image, r)) for i, image, r in zip(new, images, ref))
        images = np.stack([seen[k][0] for k in keys])
        return understanding_anchor(policy.caption_logprobs(images, prompts), [seen[k][1] for k in keys])

    return anchor


def _batch_rng(tokens: torch.Tensor, seed: int) -> np.random.Generator:
    """A replay's draws for one trained batch: the same batch replays the same renders (so a
    resumed run replays what the uninterrupted run replayed), another batch others."""
    digest = hashlib.sha256(np.ascontiguousarray(tokens.cpu().numpy()).tobytes() + str(seed).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def understanding_replay_loss(
    um: UnifiedModel, seed: int, flawed: int = 0, batch: int = PretrainConfig.batch, every: int = 1
) -> Anchor:
    """The pretraining understanding loss (captioning and yes/no with hard negatives, on fresh
    renders and their VQ reconstructions of every prompt outside `novel`): the data the judge was
    trained on, replayed while generation trains, so the judge keeps what it knew of renders. The
    anchor above only holds the judge on the round's own images, not on renders (docs/findings.md).
    With `flawed`, each batch also teaches the reject caption on that
    many flawed renders. `batch` renders are captioned per step (the first YES_NO of them also
    asked yes/no). With `every` > 1, a batch replays with probability 1/every (drawn from the
    batch's own draws, so a resumed run replays the same batches), at `every` times the loss: the
    same expected gradient for about 1/every of the cost (the replay is two thirds of a step)."""
    pcfg = PretrainConfig(batch=batch, flawed=flawed)
    data = SimpleNamespace(und=Data(seed, um.image_size, understanding_splits(pcfg)))

    def replay(prompts: list[str], tokens: torch.Tensor) -> torch.Tensor:
        data.und.rng = _batch_rng(tokens, seed)
        if every > 1 and data.und.rng.integers(every):
            return torch.zeros((), device=um.device)
        return every * understanding_loss(um, data, pcfg)

    return replay


def generation_replay_loss(um: UnifiedModel, seed: int, batch: int) -> Anchor:
    """The pretraining generation loss on `batch` fresh renders of the `train` prompts (the only
    prompts pretraining generated; never a prompt the loop is evaluated on): what the generator
    already knew, replayed so that a round which trains only where the model fails does not
    make it forget the rest."""
    data = SimpleNamespace(gen=Data(seed + 1, um.image_size, ("train",)))
    pcfg = PretrainConfig(gen_batch=batch)

    def replay(prompts: list[str], tokens: torch.Tensor) -> torch.Tensor:
        data.gen.rng = _batch_rng(tokens, seed + 1)
        return generation_loss(um, data, pcfg)

    return replay


def regulariser(um: UnifiedModel, reference: UnifiedModel | None, cfg: TrainConfig) -> Anchor | None:
    """What the trainer adds to each batch's loss so a round does not lose what the model knew:
    the understanding anchor (weight cfg.und_anchor, against the frozen `reference`), the
    understanding replay (cfg.und_replay) and the generation replay (cfg.gen_replay); None when
    every weight is 0."""
    terms = []
    if cfg.und_anchor:
        anchor = understanding_anchor_loss(um, reference)
        terms.append(lambda p, t: cfg.und_anchor * anchor(p, t))
    if cfg.und_replay:
        und = understanding_replay_loss(um, cfg.seed, cfg.und_flawed, cfg.und_batch, cfg.und_every)
        terms.append(lambda p, t: cfg.und_replay * und(p, t))
    if cfg.gen_replay:
        gen = generation_replay_loss(um, cfg.seed, cfg.batch)
        terms.append(lambda p, t: cfg.gen_replay * gen(p, t))
    return (lambda p, t: sum(term(p, t) for term in terms)) if terms else None


def train_round(
    store: Store,
    job: TrainJob,
    cache: str | Path,
    progress: bool = True,
    log: Callable[[str], None] = print,
    device: str = "cpu",
    state_record: str | None = None,
    checkpoint_every: int = 0,
    shard: str = "none",
) -> tuple[str, list]:
    """Train the base model on the round's data; returns (checkpoint reference, training log).

    With nothing to train on, the round keeps the base model (its reference comes back).
    With `state_record`, a training state found there is resumed, and with `checkpoint_every` > 0
    one is saved there every that many optimizer steps (0, the default: never; the in-process loop
    resumes whole rounds and has no job key to keep a state under).
    With shard="fsdp" under torch.distributed the trained modules are sharded over the ranks (see
    `train_sft`; no state record then); rank 0 gathers the weights and saves the whole model, and
    the other ranks return "" for the reference."""
    cfg, r, cache = job.config, job.round, Path(cache)
    data = get_round_data(store, job.data)
    torch.manual_seed(cfg.seed * 1000 + r)
    um = load_model(store, job.base, cache, device)
    needs_reference = cfg.method.endswith("dpo") or cfg.train.kl_weight > 0 or cfg.train.und_anchor > 0
    reference = load_model(store, job.base, cache, device) if needs_reference else None  # the frozen pre-round model
    tcfg = TrainConfig(**{**asdict(cfg.train), "seed": cfg.seed * 1000 + r})
    curriculum = cfg.method.startswith("c-")
    discard = list(data.discard)
    resume = get_state(store, state_record) if state_record else None
    if resume is not None:
        state, sha = resume
        log(
            f"  resuming from step {state['step']} (epoch {state['epoch'] + 1}, batch {state['position']}), state {sha[:12]}"
        )
        resume = state

    def save_state(state: dict) -> None:
        sha = put_state(store, state_record, state)
        log(f"  training state at step {state['step']} saved, {sha[:12]}")

    options = dict(
        checkpoint_every=checkpoint_every if state_record else 0,
        save_state=save_state,
        resume_state=resume,
        anchor=regulariser(um, reference, tcfg),
        shard=shard,
    )

    def replay() -> RoundData:
        """Regenerate the discard pool with the CURRENT model and judge; keep what it now accepts."""
        um.model.eval()
        fresh = RoundData()
        if discard:
            judge = make_judge(um, cfg.judge_mode, cfg.threshold)
            fresh = split_for(collect(um, judge, discard, cfg, cfg.seed * 1000 + r + 500, progress), cfg)
        log(f"  curriculum: {len(discard)} discarded prompts replayed, {len(fresh.sft)} samples now accepted")
        return fresh

    if cfg.method in ("sft", "c-sft"):
        on_epoch = (lambda e: replay().sft if e == cfg.curriculum_epoch else []) if curriculum else None
        train_log = train_sft(um, data.sft, tcfg, reference, on_epoch, progress, **options)
    else:

        def ref_logps(pairs):
            prompts = [p for p, _, _ in pairs]
            return (
                sequence_logps(reference, prompts, np.array([c for _, c, _ in pairs])),
                sequence_logps(reference, prompts, np.array([x for _, _, x in pairs])),
            )

        def on_epoch(e):
            if e != cfg.curriculum_epoch:
                return [], torch.zeros(0), torch.zeros(0)
            fresh = replay().pairs
            return (fresh, *ref_logps(fresh)) if fresh else ([], torch.zeros(0), torch.zeros(0))

        train_log = (
            train_dpo(
                um, data.pairs, *ref_logps(data.pairs), tcfg, on_epoch if curriculum else None, progress, **options
            )
            if data.pairs
            else []
        )
    if not train_log:
        return job.base, []
    if shard == "fsdp" and dist.is_initialized() and dist.get_world_size() > 1:
        weights = full_state_dict(um)  # every rank takes part; rank 0 gets the whole model
        if dist.get_rank() != 0:
            return "", train_log
        um = load_model(store, job.base, cache, "cpu")  # a plain (unsharded) model to save
        um.model.load_state_dict(weights)
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        um.save(tmp)
        return rec.put_checkpoint(store, tmp), train_log
