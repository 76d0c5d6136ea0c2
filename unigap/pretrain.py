"""Train the shipped tiny unified model from scratch on the shapes world (seeded, CPU).

Stages (docs/method.md): a VQ tokenizer; then understanding (captioning + yes/no on
clean renders, VQ reconstructions and hard negatives) alone; then understanding and generation
together. Generation is deliberately stopped early: single objects come out clean, composition
stays weak, which leaves the self-improvement loop room to work.

Generation sees `train` prompts only; understanding sees renders of every prompt outside
`novel` (the judge of a real unified model has seen far more than its generator can make), and
with `paired_yes_no` of `novel` too. The external evaluator is never called here.
"""

from __future__ import annotations

import copy
import json
import math
import re
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from transformers import JanusForConditionalGeneration

from unigap import world
from unigap.config import YES_NO
from unigap.model.adapter import UnifiedModel, gen_text, und_text
from unigap.model.build import TinySize, build_tiny
from unigap.model.judge import ANSWER_PREFIX, CAPTION_QUESTION, REJECT_CAPTION, answer, question
from unigap.progress import bar as progress_bar


@dataclass
class PretrainConfig:
    seed: int = 0
    batch: int = 32
    gen_batch: int = 48
    yes_no: int = YES_NO  # yes/no questions per understanding batch (their first renders asked)
    # The shipped recipe asks each of those renders one question, in a row of its own, with the
    # caption tokens in one mean: the paper's yes/no judge then stays at chance (docs/findings.md).
    # paired_yes_no asks each of them both its own prompt ("1") and a negative ("0"), packed behind
    # the image with its caption, the decision token in a mean of its own; understanding then also
    # sees `novel`, and negatives are drawn by kind. About twice the cost of an understanding step.
    paired_yes_no: bool = False
    yes_no_weight: float = 1.0  # paired: weight of the decision's mean NLL beside the captions' mean
    easy_negatives: float = 0.25  # paired: share of "no" questions asking an unrelated prompt
    # paired: the kinds of hard negative asked (empty: every kind, the binding kinds BINDING_WEIGHT
    # times as often). Naming the kinds a judge fails (shape, swap) focuses further training on them;
    # "order" (the relation reversed, ASKABLE_KINDS) is asked only when named.
    negative_kinds: tuple[str, ...] = ()
    # paired: draw each hard negative's kind in proportion to the decision's running error on it
    # (KIND_ERROR_DECAY below), so the kinds the judge tells apart give way to those it fails
    # without leaving any out: a focused stage alone forgets the kinds it does not ask.
    adaptive_kinds: bool = False
    vq_steps: int = 1000
    vq_lr: float = 2e-3
    und_steps: int = 400
    joint_steps: int = 2600
    final_steps: int = 800
    final_lr: float = 5e-4
    lr: float = 1e-3
    warmup: int = 100
    cfg_dropout: float = 0.1  # prompt dropout so classifier-free guidance has an unconditional branch
    recon_share: float = 0.5  # share of understanding images that are VQ reconstructions
    flawed: int = 0  # flawed renders per understanding batch, captioned REJECT_CAPTION (0 for the shipped model)
    threads: int = 2

    def __post_init__(self):
        for name in ("vq_steps", "und_steps", "joint_steps", "final_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, not {getattr(self, name)}")
        if not 0 <= self.yes_no <= self.batch:
            raise ValueError(f"--yes-no must be between 0 and the batch's {self.batch} renders, not {self.yes_no}")
        for name in ("negative_kinds", "adaptive_kinds"):
            if getattr(self, name) and not self.paired_yes_no:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag} chooses the paired questions' negatives: give --paired-yes-no too")
        unknown = sorted(set(self.negative_kinds) - set(ASKABLE_KINDS))
        if unknown:
            raise ValueError(
                f"--negative-kinds: unknown kind {', '.join(unknown)}; choose from {', '.join(ASKABLE_KINDS)}"
            )


def vocabulary() -> list[str]:
    """Every word the tiny model must read or write: prompts, questions, answers."""
    texts = [s.text for s in world.all_specs()]
    texts += [question("x"), answer(True), answer(False), CAPTION_QUESTION, gen_text(""), und_text("", "")]
    return sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]+", t)})


# The grammar's kinds of hard negative, and "order": a relation prompt reversed, in both wordings
# ("A right of B", "B left of A"). Order is an edit that relation and swap already hold among
# others; asked on its own it isolates the edit a judge reading only the axis fails.
ASKABLE_KINDS = (*world.NEGATIVE_KINDS, "order")
# Negatives that keep the image's colours and shapes and change where they are or what goes with
# what: a bag of features cannot tell them apart, so the yes/no judge learns them last and asks them more.
BINDING = ("position", "relation", "swap")
BINDING_WEIGHT = 3.0
# adaptive_kinds: each step a kind's error moves this far towards the mean NLL of its "no" answers
# that step (about ten steps of memory); the floor keeps a learnt kind asked now and then.
KIND_ERROR_DECAY = 0.9
KIND_ERROR_FLOOR = 0.02


class Data:
    """Seeded batches of (spec, image), balanced over categories.

    Generation sees only `train` prompts; understanding sees the splits `_streams` names.
    """

    def __init__(self, seed: int, size: int, splits=("train",)):
        self.rng = np.random.default_rng(seed)
        self.size = size
        specs = [s for name in splits for s in world.split(name)]
        self.by_cat = {c: [s for s in specs if s.category == c] for c in world.CATEGORIES}
        # Hard negatives (one attribute edited); a `novel` text is never asked unless `novel` is seen.
        # Also by kind (colour, shape, position, count, relation, swap), so a paired question probes
        # each kind alike, not the kinds with the most variants (colour and shape edits).
        novel = set() if "novel" in splits else {s.canonical() for s in world.split("novel")}
        self.negatives, self.by_kind = {}, {}
        for s in specs:
            edits = [(kind, n) for kind, n in world.negatives(s) if n.canonical() not in novel]
            self.negatives[s] = [n for _, n in edits]
            for kind, n in edits:
                self.by_kind.setdefault(s, {}).setdefault(kind, []).append(n)
            if s.relation:
                self.by_kind[s]["order"] = [world.reversed_order(s), replace(s, objects=s.objects[::-1])]
        self.unrelated = list(specs)  # easy negatives: prompts that share no object with the image's
        # adaptive_kinds: the decision's running NLL on each kind's "no" questions, ln 2 (chance) at first
        self.kind_error = dict.fromkeys(world.NEGATIVE_KINDS, math.log(2))  # and "order" once asked

    def specs(self, n: int) -> list:
        cats = self.rng.choice(len(world.CATEGORIES), n)
        return [
            self.by_cat[world.CATEGORIES[c]][self.rng.integers(len(self.by_cat[world.CATEGORIES[c]]))] for c in cats
        ]

    def images(self, specs) -> np.ndarray:
        seeds = self.rng.integers(0, 2**31, len(specs))
        return world.render_batch(specs, [int(s) for s in seeds], self.size)

    def flawed_images(self, specs) -> np.ndarray:
        seeds = self.rng.integers(0, 2**31, len(specs))
        return np.stack([world.render_flawed(s, int(seed), self.size)[0] for s, seed in zip(specs, seeds)])

    def negative(self, spec):
        """A hard negative of `spec`, uniformly over its edits (the shipped recipe)."""
        options = self.negatives[spec]
        return options[self.rng.integers(len(options))]

    def negative_by_kind(self, spec, easy: float, kinds: tuple[str, ...] = (), adaptive: bool = False):
        """(kind, prompt): a prompt the render of `spec` does not show (paired_yes_no). With
        probability `easy` one sharing no object with it (kind "unrelated": an easy contrast, which
        starts the comparison off), else a hard negative of a kind drawn with BINDING_WEIGHT on the
        binding kinds, or with `adaptive` in proportion to `kind_error`; with `kinds`, of one of those
        kinds only (an unrelated prompt where `spec` has none of them)."""
        by_kind = {k: v for k, v in self.by_kind[spec].items() if k in (kinds or world.NEGATIVE_KINDS)}
        if not by_kind or self.rng.random() < easy:
            while True:
                other = self.unrelated[self.rng.integers(len(self.unrelated))]
                if not set(other.objects) & set(spec.objects):
                    return "unrelated", other
        if adaptive:
            weights = np.array([self.kind_error.get(kind, math.log(2)) + KIND_ERROR_FLOOR for kind in by_kind])
        else:
            weights = np.array([BINDING_WEIGHT if kind in BINDING else 1.0 for kind in by_kind])
        kind = list(by_kind)[self.rng.choice(len(by_kind), p=weights / weights.sum())]
        return kind, by_kind[kind][self.rng.integers(len(by_kind[kind]))]

    def observe_kind_errors(self, kinds: list[str], nll: np.ndarray) -> None:
        """Move each hard kind's running error towards the mean NLL of its "no" answers this step."""
        for kind in set(kinds) & set(ASKABLE_KINDS):
            mean = float(nll[[k == kind for k in kinds]].mean())
            error = self.kind_error.get(kind, math.log(2))
            self.kind_error[kind] = KIND_ERROR_DECAY * error + (1 - KIND_ERROR_DECAY) * mean


# ---------------------------------------------------------------------- VQ
def to_pixels(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).float().div(127.5).sub(1).permute(0, 3, 1, 2)


def vq_reconstruct(vq, x: torch.Tensor):
    """Straight-through quantiser on unit vectors, reusing JanusVQVAE's modules.

    `JanusVQVAE.forward` is not trainable end to end (its quantiser passes no gradient), and its `decode` normalises
    the codebook: training on normalised codes keeps encode/decode consistent afterwards.
    """
    z = F.normalize(vq.quant_conv(vq.encoder(x)), dim=1)
    b, d, h, w = z.shape
    zf = z.permute(0, 2, 3, 1).reshape(-1, d)
    codes = F.normalize(vq.quantize.embedding.weight, dim=1)
    idx = (zf @ codes.T).argmax(1)
    q = codes[idx]
    vq_loss = F.mse_loss(q, zf.detach()) + 0.25 * F.mse_loss(zf, q.detach())
    q = (zf + (q - zf).detach()).view(b, h, w, d).permute(0, 3, 1, 2)
    return vq.decoder(vq.post_quant_conv(q)), vq_loss, idx, zf


def train_vq(vq, data: Data, cfg: PretrainConfig, log: list) -> None:
    vq.train()
    opt = torch.optim.Adam(vq.parameters(), lr=cfg.vq_lr)
    n_codes = vq.quantize.embedding.num_embeddings
    usage = torch.zeros(n_codes)
    bar = progress_bar(range(cfg.vq_steps), "VQ tokenizer")
    for step in bar:
        x = to_pixels(data.images(data.specs(cfg.batch)))
        rec, vq_loss, idx, zf = vq_reconstruct(vq, x)
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + vq_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        usage += torch.bincount(idx, minlength=n_codes)
        for g in opt.param_groups:
            g["lr"] = cfg.vq_lr * 0.5 * (1 + math.cos(math.pi * step / cfg.vq_steps))
        if step % 100 == 99:
            # Restart dead codes at encoder outputs so the codebook stays in use.
            dead = (usage == 0).nonzero().squeeze(1)
            if len(dead) and step < cfg.vq_steps * 0.8:
                pick = torch.randint(len(zf), (len(dead),))
                vq.quantize.embedding.weight.data[dead] = zf[pick].detach()
            log.append({"stage": "vq", "step": step + 1, "loss": loss.item(), "codes_used": int((usage > 0).sum())})
            bar.set_postfix(loss=f"{loss.item():.4f}", codes=int((usage > 0).sum()))
            usage.zero_()
    with torch.no_grad():  # store unit-norm rows: encode() then agrees with decode()
        vq.quantize.embedding.weight.data = F.normalize(vq.quantize.embedding.weight.data, dim=1)
    vq.eval()


# ---------------------------------------------------------------------- understanding / generation
def understanding_loss(um: UnifiedModel, data: Data, cfg: PretrainConfig) -> torch.Tensor:
    """Captioning + yes/no with hard negatives, on clean renders and VQ reconstructions; with
    cfg.flawed, also the reject caption of that many flawed renders. The yes/no questions as
    cfg.paired_yes_no says (PretrainConfig)."""
    data = data.und
    specs = data.specs(cfg.batch)
    images = data.images(specs)
    if cfg.flawed:
        images = np.concatenate([images, data.flawed_images(data.specs(cfg.flawed))])
    recon = data.rng.random(len(images)) < cfg.recon_share
    if recon.any():
        images[recon] = um.decode(um.encode(images[recon]))
    captions = [s.text for s in specs] + [REJECT_CAPTION] * cfg.flawed
    if cfg.paired_yes_no:
        return _paired_loss(um, data, cfg, specs, images, captions)
    k = cfg.yes_no
    aligned = data.rng.random(k) < 0.5
    asked = [s if a else data.negative(s) for s, a in zip(specs[:k], aligned)]
    questions = [CAPTION_QUESTION] * len(images) + [question(s.text) for s in asked]
    answers = captions + [answer(a) for a in aligned]
    logp, amask = um.answer_token_logprobs(np.concatenate([images, images[:k]]), questions, answers)
    return -(logp * amask).sum() / amask.sum()


def _paired_loss(um: UnifiedModel, data: Data, cfg: PretrainConfig, specs, images, captions) -> torch.Tensor:
    """Each of the first cfg.yes_no renders asked about its own prompt ("1") and a negative ("0"),
    in one packed row with its caption: the same image with both answers, so the decision must
    come from comparing image and prompt, and a question costs its words only."""
    k = min(cfg.yes_no, len(specs))
    turns, counts, kinds = [], [], []
    for i, caption in enumerate(captions):
        turns.append((CAPTION_QUESTION, caption))
        if i < k:
            kind, negative = data.negative_by_kind(specs[i], cfg.easy_negatives, cfg.negative_kinds, cfg.adaptive_kinds)
            turns += [(question(specs[i].text), answer(True)), (question(negative.text), answer(False))]
            kinds.append(kind)
        counts.append(3 if i < k else 1)
    logp, amask = um.dialogue_token_logprobs(images, turns, counts)
    # Three means, so none dilutes another: the captions; the answer format of the yes/no turns ("The
    # score is", learnt at once); and the decision, one token each, which averaged with the caption
    # tokens would weigh almost nothing (the judge then stays at chance).
    asked = torch.tensor([q != CAPTION_QUESTION for q, _ in turns], device=amask.device)
    decision = torch.zeros_like(amask)
    decision[asked, len(um.token_ids([ANSWER_PREFIX], special=False)[0])] = True
    caption, form = amask & ~asked[:, None], amask & asked[:, None] & ~decision
    loss = -(logp * caption).sum() / caption.sum()
    if asked.any():
        decided = logp[decision]  # in turn order: each image's own prompt ("1"), then its negative ("0")
        loss = loss - (logp * form).sum() / form.sum() - cfg.yes_no_weight * decided.mean()
        data.observe_kind_errors(kinds, -decided[1::2].detach().cpu().numpy())
    return loss


def generation_loss(um: UnifiedModel, data: Data, cfg: PretrainConfig) -> torch.Tensor:
    data = data.gen
    specs = data.specs(cfg.gen_batch)
    tokens = um.encode(data.images(specs))
    drop = torch.from_numpy(data.rng.random(len(specs)) < cfg.cfg_dropout)
    return -um.image_logprobs([s.text for s in specs], tokens, drop=drop).mean()


def lm_parameters(um: UnifiedModel):
    return [p for n, p in um.model.named_parameters() if not n.startswith("model.vqmodel.")]


def train_stage(um, data, cfg, steps: int, losses: dict, name: str, log: list, lr: float | None = None) -> None:
    um.model.train()
    um.model.model.vqmodel.eval()
    params = lm_parameters(um)
    lr = cfg.lr if lr is None else lr
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    bar = progress_bar(range(steps), name)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        values = {k: fn(um, data, cfg) for k, fn in losses.items()}
        opt.zero_grad()
        sum(values.values()).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 100 == 99 or step == steps - 1:
            row = {k: round(v.item(), 4) for k, v in values.items()}
            # the decision's running NLL per kind of negative: which kinds the yes/no judge fails
            errors = (
                {"kind_error": {k: round(v, 3) for k, v in data.und.kind_error.items()}} if cfg.paired_yes_no else {}
            )
            log.append({"stage": name, "step": step + 1, **row, **errors})
            bar.set_postfix(row)
    um.model.eval()


UNDERSTANDING = {"und": understanding_loss}
JOINT = {"und": understanding_loss, "gen": generation_loss}


UNDERSTANDING_SPLITS = ("train", "val", "heldout")  # every prompt outside `novel`


def understanding_splits(cfg: PretrainConfig) -> tuple[str, ...]:
    """The splits understanding sees: with paired_yes_no `novel` too, so that `novel` measures
    whether the loop moves what understanding knows into generation."""
    return UNDERSTANDING_SPLITS + ("novel",) * cfg.paired_yes_no


def _streams(seed: int, size: int, cfg: PretrainConfig) -> SimpleNamespace:
    """Understanding batches over understanding_splits(cfg), generation batches over `train` only."""
    return SimpleNamespace(und=Data(seed, size, understanding_splits(cfg)), gen=Data(seed + 1, size, ("train",)))


def _resume(model, folder: Path, log: list, prefix: str = "") -> bool:
    """Load a finished stage of this very command (same config and seed) instead of redoing it."""
    if not (folder / "weights.safetensors").is_file():
        return False
    load_model(model.get_submodule(prefix) if prefix else model, folder / "weights.safetensors")
    log += json.loads((folder / "log.json").read_text())
    return True


def _save_stage(model, folder: Path, log: list, since: int, prefix: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_model(model.get_submodule(prefix) if prefix else model, folder / "weights.safetensors")
    (folder / "log.json").write_text(json.dumps(log[since:]))


def pretrain(out: Path, cfg: PretrainConfig = PretrainConfig(), size: TinySize = TinySize()) -> UnifiedModel:
    """Train from scratch; each finished stage is kept under `out/stage-*`, so a rerun of the
    same command after an interruption resumes after its last finished stage."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    model, processor = build_tiny(vocabulary(), size, cfg.seed)
    um = UnifiedModel(model, processor)
    out = Path(out)
    log: list = []
    vq = "model.vqmodel"
    if not _resume(model, out / "stage-vq", log, vq):
        train_vq(model.model.vqmodel, Data(cfg.seed, size.image_size), cfg, log)
        _save_stage(model, out / "stage-vq", log, 0, vq)
    # Later stages draw from their own streams, so a resumed run equals an uninterrupted one.
    if not _resume(model, out / "stage-joint", log):
        torch.manual_seed(cfg.seed + 1)
        data = _streams(cfg.seed + 1, size.image_size, cfg)
        since = len(log)
        train_stage(um, data, cfg, cfg.und_steps, UNDERSTANDING, "understanding", log)
        train_stage(um, data, cfg, cfg.joint_steps, JOINT, "understanding+generation", log)
        _save_stage(model, out / "stage-joint", log, since)
    # A last joint stage at a lower rate sharpens understanding (relations, counts). Generation must
    # stay in it: an understanding-only stage here collapsed generation to ~1% (shared LM drift).
    data = _streams(cfg.seed + 3, size.image_size, cfg)
    train_stage(um, data, cfg, cfg.final_steps, JOINT, "understanding+generation (final)", log, cfg.final_lr)
    um.model.eval()
    um.save(out)
    (out / "pretrain.json").write_text(
        json.dumps(
            {"config": asdict(cfg), "size": asdict(size), "seconds": round(time.time() - t0), "log": log}, indent=1
        )
    )
    return um


# ---------------------------------------------------------------------- growing the language model
NEW_LAYER_OUTPUTS = ("self_attn.o_proj.weight", "mlp.down_proj.weight")


def check_growth(depth: int, layers: int) -> None:
    """`layers` a multiple of `depth`; `depth` itself grows nothing, so the same steps on the same
    model are the control for growing."""
    if layers < depth or layers % depth:
        raise ValueError(f"layers must be a multiple of the model's {depth}, not {layers}")


def grow_depth(um: UnifiedModel, layers: int) -> UnifiedModel:
    """The same model with a language model `layers` deep (a multiple of its depth): each layer
    is followed by copies of itself whose output projections start at zero, so the grown model
    computes exactly what the original did and training finds a use for the new depth."""
    config = copy.deepcopy(um.model.config)
    old = config.text_config.num_hidden_layers
    check_growth(old, layers)
    config.text_config.num_hidden_layers = layers
    k = layers // old
    grown = {}
    for name, value in um.model.state_dict().items():
        head, sep, rest = name.partition(".language_model.layers.")
        if not sep:
            grown[name] = value
            continue
        i, tail = rest.split(".", 1)
        grown[f"{head}{sep}{int(i) * k}.{tail}"] = value
        for j in range(1, k):
            grown[f"{head}{sep}{int(i) * k + j}.{tail}"] = (
                torch.zeros_like(value) if tail in NEW_LAYER_OUTPUTS else value.clone()
            )
    model = JanusForConditionalGeneration(config)
    model.load_state_dict(grown, strict=True)
    return UnifiedModel(model.eval(), um.processor)


def grow(
    start: Path,
    out: Path,
    layers: int,
    steps: int,
    lr: float = 5e-4,
    seed: int = 11,
    cfg: PretrainConfig = PretrainConfig(),
) -> UnifiedModel:
    """Grow a trained model's language model and continue joint training (the final stage's data)."""
    torch.set_num_threads(cfg.threads)
    t0 = time.time()
    um = grow_depth(UnifiedModel.load(start), layers)
    torch.manual_seed(seed)
    log: list = []
    train_stage(um, _streams(seed, um.image_size, cfg), cfg, steps, JOINT, f"grown to {layers} layers", log, lr)
    um.save(out)
    record = {
        "start": str(start),
        "layers": layers,
        "steps": steps,
        "lr": lr,
        "seed": seed,
        "config": asdict(cfg),
        "seconds": round(time.time() - t0),
        "log": log,
    }
    (Path(out) / "grow.json").write_text(json.dumps(record, indent=1))
    return um
