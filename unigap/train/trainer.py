"""SFT and DPO on image tokens, one round at a time (docs/method.md).

Plain loops over the adapter's teacher-forced log-probs: no Trainer class hierarchy. Only the
shared language model is trained by default; the generation head and aligner can be added.

Under torch.distributed (the trainer job run by torchrun) every rank draws the same global batch
order from the shared seed, takes its share of each batch, and DistributedDataParallel averages the
gradients, so N processes train the same model as one, up to float error. Alone, nothing changes.
With `shard="fsdp"` the trained modules are sharded instead (FSDP2 `fully_shard`): each rank keeps
1/N of their weights, gradients and AdamW moments, so a model too big for one device trains on N.

A run can be stopped and resumed: every `checkpoint_every` optimizer steps `save_state(state)` gets
where it stands (step, epoch and batch, the trainable weights, AdamW's moments, the batch-order and
torch RNGs, the samples the curriculum has added, the log so far), and `resume_state=state` starts
a run there, so that it makes exactly the updates the uninterrupted run makes after that step.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from unigap.config import MODULES, TrainConfig
from unigap.model.adapter import UnifiedModel
from unigap.progress import bar
from unigap.train.losses import dpo_loss, kl_anchor, sft_loss

LM = "model.language_model."
HEAD = ("model.generation_head.", "model.generation_aligner.", "model.generation_embeddings.")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def trainable_parameters(um: UnifiedModel, modules: str = "lm", lora: bool = False) -> list[torch.nn.Parameter]:
    """The shared LM (default), or the LM plus the generation head and aligner; all else frozen.
    With `lora`, the LM trains through its LoRA adapters only (see `lora_adapters`)."""
    if modules not in MODULES:
        raise ValueError(f"modules must be one of {MODULES}, not {modules!r}")

    def trains(name: str) -> bool:
        if name.startswith(LM):
            return "lora_" in name if lora else True
        return modules == "lm+head" and name.startswith(HEAD)

    params = []
    for name, p in um.model.named_parameters():
        p.requires_grad_(trains(name))
        if p.requires_grad:
            params.append(p)
    return params


@contextmanager
def lora_adapters(um: UnifiedModel, rank: int):
    """With rank > 0, LoRA adapters (peft) on the shared LM's projections while the block runs,
    merged into the weights at its end, so what is saved afterwards is a plain Janus checkpoint.
    The adapters' initialisation draws from torch's RNG: seeded runs stay reproducible."""
    if rank <= 0:
        yield
        return
    from peft import LoraConfig
    from peft.tuners.lora import LoraModel

    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=list(LORA_TARGETS))
    adapted = LoraModel(um.model.model.language_model, config, "default")
    try:
        yield
    finally:
        um.model.model.language_model = adapted.merge_and_unload()


def _world() -> tuple[int, int]:
    """(rank, world size) of the torch.distributed group; (0, 1) when training alone."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _LogProbs(torch.nn.Module):
    """The adapter's image-token log-probs as a module, so that DDP's (or FSDP's) hooks fire on its backward."""

    def __init__(self, um: UnifiedModel):
        super().__init__()
        self.model, self.um = um.model, um  # `model` registers the parameters DDP synchronises

    def forward(self, prompts: list[str], tokens: torch.Tensor) -> torch.Tensor:
        return self.um.image_logprobs(prompts, tokens)


def _logprobs(um: UnifiedModel) -> Callable[[list[str], torch.Tensor], torch.Tensor]:
    """`um.image_logprobs`, or its DDP-wrapped twin in a group of several ranks. Call it after the
    trainable parameters are chosen: DDP reduces the gradients of those only."""
    if _world()[1] == 1:
        return um.image_logprobs
    cuda = um.device.type == "cuda"
    return DistributedDataParallel(_LogProbs(um), device_ids=[um.device.index] if cuda else None)


SHARDS = ("none", "fsdp")


def shard_model(um: UnifiedModel, modules: str = "lm") -> torch.nn.Module:
    """Shard what trains over the torch.distributed group (FSDP2 `fully_shard`, in place) and
    return the training forward (`um.image_logprobs` as a module) as the sharded root.

    Units, each gathered whole only for its own forward and backward: every decoder layer of the
    shared LM, and with "lm+head" the generation head and aligner. The root holds the other weights
    that train (the input embeddings, the final norm, the generation embeddings): gathered for the
    whole step, reduced at its end. The adapter calls the embeddings directly, outside the LM's
    forward, and FSDP2 needs one root whose forward runs first: hence the whole training forward as
    the root. (The input embeddings as a unit of their own, called on token ids outside the LM's
    forward, were never updated: in the root they are.) Weights that do not train stay whole on every rank.
    Call it after `trainable_parameters` and before the optimizer is made: the parameters become
    DTensors holding this rank's shard. Assumes a Janus model and no LoRA."""
    from torch.distributed.fsdp import fully_shard

    units = list(um.model.model.language_model.layers)
    if modules == "lm+head":
        units += [um.model.model.generation_head, um.model.model.generation_aligner]
    for unit in units:
        fully_shard(unit)
    in_units = {id(p) for unit in units for p in unit.parameters()}
    frozen = {p for p in um.model.parameters() if not p.requires_grad and id(p) not in in_units}
    return fully_shard(_LogProbs(um), ignored_params=frozen)


def full_state_dict(um: UnifiedModel) -> dict[str, torch.Tensor]:
    """The whole model's weights gathered from a sharded model (`shard_model`) onto rank 0's CPU;
    other ranks get {}. A collective: every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(um.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _share(idx: np.ndarray) -> tuple[np.ndarray, float]:
    """This rank's rows of a global batch, and the weight of its mean loss.

    DDP averages the ranks' gradients; weighting each rank's mean loss by (its rows / batch) x world
    size turns that average into the gradient of the mean loss over the whole batch, even when the
    shares differ. A rank left without rows runs one at weight 0: it must still join the all-reduce."""
    rank, world = _world()
    if world == 1:
        return idx, 1.0
    mine = np.array_split(idx, world)[rank]
    if len(mine) == 0:
        return idx[:1], 0.0
    return mine, len(mine) * world / len(idx)


def _mean(x: torch.Tensor, weight: float) -> float:
    """The whole batch's mean of a per-rank mean (what a single process logs)."""
    world = _world()[1]
    if world == 1:
        return x.item()
    total = x.detach() * (weight / world)
    dist.all_reduce(total)
    return total.item()


def _batches(n: int, batch: int, rng: np.random.Generator):
    order = rng.permutation(n)
    for i in range(0, n, batch):
        yield order[i : i + batch]


@torch.no_grad()
def sequence_logps(um: UnifiedModel, prompts: list[str], tokens: np.ndarray, batch: int = 64) -> torch.Tensor:
    """Summed image-token log-probs [B] of fixed sequences (e.g. the frozen reference's, once per round)."""
    out = []
    for i in range(0, len(prompts), batch):
        t = torch.as_tensor(np.asarray(tokens[i : i + batch]))
        out.append(um.image_logprobs(prompts[i : i + batch], t).sum(-1).cpu())
    return torch.cat(out) if out else torch.zeros(0)


def lr_factor(step: int, total: int) -> float:
    """Linear warm-up over the first tenth of the steps, then cosine decay to zero at `total`."""
    warm = max(1, total // 10)
    return min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


def update(loss: torch.Tensor, opt, params, lr: float) -> None:
    """One optimizer step at learning rate `lr`, gradients clipped to norm 1."""
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()


# ---------------------------------------------------------------------- training state (resume)
STATE_VERSION = 2  # 2: one row list for both trainers (DPO rows carry their reference log-probs)


def _detached(x):
    """A copy of `x` on the CPU that later steps cannot change (tensors cloned; dicts, lists, tuples walked)."""
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", copy=True)
    if isinstance(x, dict):
        return {k: _detached(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_detached(v) for v in x)
    return copy.deepcopy(x)


def _pack(rows: list[tuple]) -> list[tuple]:
    """Samples with their numpy arrays as tensors: torch.load(weights_only=True) reads tensors, not numpy."""
    return [tuple(torch.tensor(x) if isinstance(x, np.ndarray) else x for x in row) for row in rows]


def _unpack(rows: list[tuple]) -> list[tuple]:
    return [tuple(x.numpy() if isinstance(x, torch.Tensor) else x for x in row) for row in rows]


def _digest(rows: list[tuple]) -> str:
    """A run's training data, in short: a state resumes only the run it was taken from."""
    h = hashlib.sha256()
    for row in rows:
        for x in row:
            h.update(np.ascontiguousarray(x).tobytes() if isinstance(x, np.ndarray) else str(x).encode())
    return h.hexdigest()


class _Checkpoints:
    """Saves a run's state every `every` optimizer steps and restores one on start.

    A state is taken after an optimizer step, at batch `position` (1-based) of epoch `epoch`
    (0-based). It keeps the batch-order RNG as it was at the start of that epoch (the epoch's order
    is drawn again from it and its first `position` batches skipped), and the samples the curriculum
    has added by then (a replay is not repeated: its result is in the state)."""

    def __init__(
        self,
        kind: str,
        um: UnifiedModel,
        params: list,
        opt,
        rng: np.random.Generator,
        cfg: TrainConfig,
        rows: list,
        every: int,
        save: Callable[[dict], None] | None,
    ):
        if every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, not {every}")
        names = {id(p): name for name, p in um.model.named_parameters()}
        self.names = [names[id(p)] for p in params]
        self.um, self.params, self.opt, self.rng, self.cfg = um, params, opt, rng, cfg
        self.every, self.save = (every, save) if save is not None else (0, None)
        self.run = {
            "kind": kind,
            "n": len(rows),
            "data": _digest(rows),
            "cfg": asdict(cfg),
        }  # what a state must come from

    def due(self, step: int, epoch: int, position: int, batches: int) -> bool:
        # Not after the very last step: the finished model is written next.
        last = epoch == self.cfg.epochs - 1 and position == batches
        return bool(self.every) and step % self.every == 0 and not last

    def take(self, step: int, epoch: int, position: int, epoch_rng: dict, added, log: list, running: dict) -> None:
        cuda = self.um.device.type == "cuda"
        self.save(
            _detached(
                {
                    "version": STATE_VERSION,
                    "run": self.run,
                    "step": step,
                    "epoch": epoch,
                    "position": position,
                    "epoch_rng": epoch_rng,
                    "params": {name: p for name, p in zip(self.names, self.params)},
                    "optimizer": self.opt.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state(self.um.device) if cuda else None,
                    "added": added,
                    "log": log,
                    "running": running,
                }
            )
        )

    def restore(self, state: dict) -> dict:
        """Puts the weights, optimizer and RNGs where `state` has them; returns the state."""
        if state.get("version") != STATE_VERSION or state.get("run") != self.run:
            raise ValueError(
                f"the training state to resume is not from this run: it is from {state.get('run')}, this is {self.run}"
            )
        with torch.no_grad():
            for name, p in zip(self.names, self.params):
                p.copy_(state["params"][name])
        self.opt.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["epoch_rng"]
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and self.um.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.um.device)
        return state


# The regulariser: (prompts, image tokens) of a batch -> a loss, already weighted (the anchor and
# the replays of unigap/train/round.py).
Anchor = Callable[[list[str], torch.Tensor], torch.Tensor]


def _train(
    kind: str,
    um: UnifiedModel,
    rows: list[tuple],
    cfg: TrainConfig,
    batch_loss: Callable[[Callable, list[tuple]], tuple[torch.Tensor, dict]],
    on_epoch: Callable[[int], list[tuple]] | None,
    progress: bool,
    checkpoint_every: int,
    save_state: Callable[[dict], None] | None,
    resume_state: dict | None,
    anchor: Anchor | None,
    shard: str = "none",
) -> list[dict]:
    """The one training loop of SFT and DPO: epochs of shuffled batches of `rows`, the curriculum's
    rows added before an epoch, states taken and resumed. `batch_loss(logprobs, batch)` returns the
    batch's loss and any further figures to log (their epoch means go in the log, as the loss's);
    it adds `anchor`'s loss, which is given exactly when cfg.und_anchor, cfg.und_replay or cfg.gen_replay weighs one.
    With shard="fsdp" in a group of several ranks, `um` is left sharded (`shard_model`): take its
    weights with `full_state_dict`. Sharding supports full weights only (no LoRA), no curriculum,
    no regulariser and no training states (a killed sharded job trains again from the start)."""
    if shard not in SHARDS:
        raise ValueError(f"shard must be one of {', '.join(SHARDS)}, not {shard!r}")
    sharded = shard == "fsdp" and _world()[1] > 1
    if sharded and (cfg.lora_rank > 0 or on_epoch is not None or checkpoint_every or resume_state is not None):
        raise ValueError(
            "a sharded trainer (fsdp) trains full weights without a curriculum or training states: "
            "set --lora-rank 0, a method without c-, and no checkpoints"
        )
    if not rows:
        return []
    if cfg.regularised != (anchor is not None):
        raise ValueError(
            f"und_anchor {cfg.und_anchor}, und_replay {cfg.und_replay} and gen_replay {cfg.gen_replay} need an anchor, "
            "and an anchor needs one of them > 0"
        )
    if anchor is not None and _world()[1] > 1:
        # Its forward runs outside the DDP-wrapped one, so DDP would not reduce its gradients.
        raise ValueError(
            "the understanding anchor and the replays run in a single trainer process only (--trainer-procs 1)"
        )
    with lora_adapters(um, cfg.lora_rank):
        rng = np.random.default_rng(cfg.seed)
        params = trainable_parameters(um, cfg.modules, lora=cfg.lora_rank > 0)
        if sharded:
            root = shard_model(um, cfg.modules)
            params = [p for p in um.model.parameters() if p.requires_grad]  # now this rank's shards
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        n0 = len(rows)
        ckpt = _Checkpoints(kind, um, params, opt, rng, cfg, rows, checkpoint_every, save_state)
        log, step, start, skip, running = [], 0, 0, 0, {}
        if resume_state is not None:
            st = ckpt.restore(resume_state)
            rows = rows + _unpack(st["added"])
            log, step, start, skip = list(st["log"]), st["step"], st["epoch"], st["position"]
            running = {k: list(v) for k, v in st["running"].items()}
        # after a restore: DDP starts every rank from rank 0's weights
        logprobs = root if sharded else _logprobs(um)
        um.model.train()
        for epoch in range(start, cfg.epochs):
            if on_epoch is not None and epoch > 0 and not (resume_state is not None and epoch == start):
                rows = rows + on_epoch(epoch)
                um.model.train()
            # The schedule spans the epochs left at this epoch's size, so what the curriculum adds is
            # trained at a live rate rather than past the end of a schedule fixed at the start.
            total = step - skip + (cfg.epochs - epoch) * math.ceil(len(rows) / cfg.batch)
            epoch_rng = copy.deepcopy(rng.bit_generator.state)
            batches = list(_batches(len(rows), cfg.batch, rng))
            for position, idx in enumerate(
                bar(batches[skip:], f"{kind.upper()} epoch {epoch + 1}", progress, initial=skip, total=len(batches)),
                start=skip + 1,
            ):
                idx, weight = _share(idx)
                loss, figures = batch_loss(logprobs, [rows[i] for i in idx])
                update(loss * weight, opt, params, cfg.lr * lr_factor(step, total))
                step += 1
                for name, value in {"loss": loss, **figures}.items():
                    running.setdefault(name, []).append(_mean(value, weight))
                if ckpt.due(step, epoch, position, len(batches)):
                    ckpt.take(step, epoch, position, epoch_rng, _pack(rows[n0:]), log, running)
            log.append({"epoch": epoch + 1, **{name: float(np.mean(v)) for name, v in running.items()}, "n": len(rows)})
            skip, running = 0, {}
        um.model.eval()
        return log


def train_sft(
    um: UnifiedModel,
    samples: list[tuple[str, np.ndarray]],
    cfg: TrainConfig,
    reference: UnifiedModel | None = None,
    on_epoch: Callable[[int], list[tuple[str, np.ndarray]]] | None = None,
    progress: bool = True,
    checkpoint_every: int = 0,
    save_state: Callable[[dict], None] | None = None,
    resume_state: dict | None = None,
    anchor: Anchor | None = None,
    shard: str = "none",
) -> list[dict]:
    """NLL on accepted images' tokens (+ a KL anchor to `reference` when cfg.kl_weight is set,
    + `anchor(prompts, tokens)`, the understanding anchor and the replays, weighted by their cfg weights).
    `on_epoch(e)` may return new samples (the curriculum).

    `save_state` gets the run's state every `checkpoint_every` optimizer steps (0: never);
    `resume_state` (one of those) continues that run where the state was taken. `shard` as in `_train`."""

    def batch_loss(logprobs, batch):
        prompts = [p for p, _ in batch]
        tokens = torch.as_tensor(np.stack([t for _, t in batch]))
        logps = logprobs(prompts, tokens)
        loss = sft_loss(logps)
        if cfg.kl_weight and reference is not None:
            with torch.no_grad():
                ref = reference.image_logprobs(prompts, tokens)
            loss = loss + cfg.kl_weight * kl_anchor(logps, ref)
        if anchor is not None:
            loss = loss + anchor(prompts, tokens)
        return loss, {}

    return _train(
        "sft",
        um,
        samples,
        cfg,
        batch_loss,
        on_epoch,
        progress,
        checkpoint_every,
        save_state,
        resume_state,
        anchor,
        shard,
    )


def _with_references(pairs: list, ref_chosen: torch.Tensor | None, ref_rejected: torch.Tensor | None) -> list[tuple]:
    """DPO rows: (prompt, chosen, rejected, reference log-prob of chosen, of rejected), the last
    two None when the reference model is to compute them in the step."""
    if ref_chosen is None or ref_rejected is None:
        return [(p, w, l, None, None) for p, w, l in pairs]
    return [(p, w, l, a, b) for (p, w, l), a, b in zip(pairs, ref_chosen.tolist(), ref_rejected.tolist())]


def train_dpo(
    um: UnifiedModel,
    pairs: list[tuple[str, np.ndarray, np.ndarray]],
    ref_chosen: torch.Tensor | None,
    ref_rejected: torch.Tensor | None,
    cfg: TrainConfig,
    on_epoch: Callable[[int], tuple[list, torch.Tensor, torch.Tensor]] | None = None,
    progress: bool = True,
    checkpoint_every: int = 0,
    save_state: Callable[[dict], None] | None = None,
    resume_state: dict | None = None,
    reference: UnifiedModel | None = None,
    anchor: Anchor | None = None,
    shard: str = "none",
) -> list[dict]:
    """Sequence-level DPO over image tokens (+ NLL on the chosen image, + the understanding
    anchor and replay on the chosen images as in `train_sft`). The reference log-probs
    are given (computed once per round, the default of the loop), or, when they are None, the
    `reference` model computes them in every step (no pass up front, twice the forwards).
    `on_epoch(e)` may return new pairs with their reference log-probs (the curriculum).

    `checkpoint_every`, `save_state`, `resume_state` and `shard` as in `train_sft`."""

    def batch_loss(logprobs, batch):
        prompts = [r[0] for r in batch]
        chosen = torch.as_tensor(np.stack([r[1] for r in batch]))
        rejected = torch.as_tensor(np.stack([r[2] for r in batch]))
        logp = logprobs(prompts + prompts, torch.cat([chosen, rejected]))
        lw, ll = logp[: len(batch)], logp[len(batch) :]
        if batch[0][3] is None:  # no reference log-probs given: the reference model runs now
            with torch.no_grad():
                ref = reference.image_logprobs(prompts + prompts, torch.cat([chosen, rejected])).sum(-1)
            ref_w, ref_l = ref[: len(batch)], ref[len(batch) :]
        else:
            ref_w = torch.tensor([r[3] for r in batch], dtype=torch.float32, device=lw.device)
            ref_l = torch.tensor([r[4] for r in batch], dtype=torch.float32, device=lw.device)
        loss, margin = dpo_loss(lw.sum(-1), ll.sum(-1), ref_w, ref_l, cfg.beta)
        if cfg.nll_weight:
            loss = loss + cfg.nll_weight * sft_loss(lw)
        if anchor is not None:
            loss = loss + anchor(prompts, chosen)
        return loss, {"margin": margin.mean()}

    if (ref_chosen is None or ref_rejected is None) and reference is None:
        raise ValueError("train_dpo needs the reference log-probs or the reference model")
    more = None if on_epoch is None else (lambda e: _with_references(*on_epoch(e)))
    rows = _with_references(pairs, ref_chosen, ref_rejected)
    return _train(
        "dpo", um, rows, cfg, batch_loss, more, progress, checkpoint_every, save_state, resume_state, anchor, shard
    )
