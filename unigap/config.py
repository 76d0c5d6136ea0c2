"""Settings of the loop and its trainer: plain dataclasses, importable without torch, so the CLI
takes its defaults from here and there is one place that says what the default recipe is."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

METHODS = ("sft", "dpo", "c-sft", "c-dpo")
POOLS = ("train+heldout", "train", "heldout+val")  # named pools: splits joined by "+"
MODULES = ("lm", "lm+head")
CONTROL_ARMS = ("render", "oracle", "judge", "all")  # `unigap controls` (unigap/controls.py)
YES_NO = 8  # yes/no rows of each understanding batch, pretraining's and the replay's (its first renders asked)


@dataclass
class TrainConfig:
    epochs: int = 6  # with und_every 4 a step costs half of one with the replay each batch: 6 epochs in the time of 3
    lr: float = 1e-3
    batch: int = 16
    beta: float = 0.1  # DPO temperature
    nll_weight: float = 1.0  # DPO: NLL on the chosen image (the paper uses one)
    kl_weight: float = 0.0  # SFT: KL anchor to the pre-round model
    und_anchor: float = 0.0  # weight of the understanding anchor (caption ranking of the batch's images vs the pre-round model)
    und_replay: float = 1.0  # weight of the understanding replay (the pretraining captioning and yes/no loss on fresh renders)
    gen_replay: float = 1.0  # weight of the generation replay (the pretraining generation loss on fresh renders of `train` prompts)
    und_flawed: int = 0  # flawed renders per replay batch, captioned as showing no prompt (the judge's reject caption)
    und_batch: int = 32  # renders per understanding-replay batch (pretraining's): two thirds of a step's time, yet 8 lost generation (README)
    und_every: int = 4  # the understanding replay joins one batch in this many (drawn per batch), at this many times its weight
    modules: str = "lm+head"
    lora_rank: int = 0  # > 0: the LM trains through LoRA adapters of this rank (peft), merged after
    seed: int = 0

    @property
    def regularised(self) -> bool:
        """Whether a step adds the anchor or a replay (unigap/train/round.py: regulariser)."""
        return bool(self.und_anchor or self.und_replay or self.gen_replay)


@dataclass
class LoopConfig:
    rounds: int = 3
    method: str = "sft"
    n: int = 32
    seed: int = 0
    pool: str = "heldout+val"  # the evaluated texts only: every row goes where the loop is measured
    judge_mode: str = "likelihood"
    threshold: float = 0.5  # accept when the judge's p_yes >= threshold
    max_per_prompt: int = 16  # SFT: keep at most this many accepted candidates per prompt (0: all)
    balance: bool = True  # SFT: every prompt with an accepted candidate gives exactly max_per_prompt rows
    focus: float = 0.5  # SFT: a prompt accepted more often than this gives `solved_rows` rows only (1: off)
    solved_rows: int = 4  # SFT: rows a prompt above `focus` gives (0: none)
    min_accept_rate: float = 0.0  # SFT: a prompt accepted less often than this gives no rows
    cfg: float = 1.5  # candidate sampling: low guidance and temperature (FINDINGS.md)
    temperature: float = 0.7
    canonical: bool = True  # train on decode -> re-encode tokens
    restart: bool = True  # each round trains on every round's candidates so far (STaR: from the start, unless warm)
    warm: bool = True  # with restart: each round trains the last promoted model (not the start) on them all
    train: TrainConfig = field(default_factory=TrainConfig)
    curriculum_epoch: int = 1  # C-SFT / C-DPO: replay the discard pool before this epoch (0-based)
    eval_n: int = 5
    val_n: int = 20  # images per val prompt in each evaluation, the gate's (0: eval_n)
    val_pairs: int = 20  # rendered understanding pairs per val prompt, the gate's understanding sample
    eval_per_category: int = 0  # 0: every prompt of each evaluated split (tests use fewer)
    eval_seed: int = 12345  # fixed: every round is evaluated on the same seeds
    gate_und_tolerance: float = 0.02
    gate_diversity_floor: float = 0.7
    gate_external: bool = True  # also require val external accuracy not to fall (model selection on val)
    gate_ext_tolerance: float = 0.01  # the external check lets val accuracy fall by at most this
    # The gate measures the incumbent again beside the candidate, on a val sample of the round's own
    # seed: the figure it was promoted for is its luckiest (1.5 NU points on average, README).
    gate_fresh_val: bool = False

    @classmethod
    def from_dict(cls, d: dict) -> "LoopConfig":
        """The inverse of `asdict`: a job record's or a loop JSON's settings. A setting the dict
        lacks (written before the setting existed) takes the value it had then (FIRST), so
        `from_dict({})` is the first defaults and `from_dict({"n": 32})` those but for n."""
        first = first_defaults()
        return cls(**{**first, **d, "train": TrainConfig(**{**first["train"], **d.get("train", {})})})

    def key(self, start_ref: str, pool_texts: list[str]) -> str:
        """A run's identity: the same settings on the same model resume the same run. Settings at
        their first defaults (FIRST) are left out, so neither a setting added later (its default
        keeping the old behaviour) nor a changed default orphans the runs made before it."""
        settings = {k: v for k, v in _changed(asdict(self), first_defaults()).items() if k != "rounds"}
        blob = json.dumps({"cfg": settings, "start": start_ref, "pool": pool_texts}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# The defaults before the demo-time recipe became the default: runs are keyed against them, and a
# JSON written before a setting existed meant them. Only settings whose default changed are here.
FIRST = {
    "n": 8, "pool": "train+heldout", "max_per_prompt": 0, "balance": False, "focus": 1.0, "solved_rows": 1, "restart": False,
    "warm": False, "val_n": 0, "val_pairs": 1, "gate_ext_tolerance": 0.0,
    "train": {"epochs": 2, "lr": 1e-4, "und_replay": 0.0, "gen_replay": 0.0, "modules": "lm", "und_every": 1},
}


def first_defaults() -> dict:
    """`asdict(LoopConfig())` with the FIRST defaults in place of the changed ones."""
    now = asdict(LoopConfig())
    return {**now, **FIRST, "train": {**now["train"], **FIRST["train"]}}


def _changed(values: dict, defaults: dict) -> dict:
    """The entries of `values` that differ from `defaults` (nested dicts compared entry by entry)."""
    return {k: _changed(v, defaults[k]) if isinstance(v, dict) else v for k, v in values.items() if v != defaults.get(k)}
