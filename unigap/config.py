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
    epochs: int = 2
    lr: float = 1e-4
    batch: int = 16
    beta: float = 0.1  # DPO temperature
    nll_weight: float = 1.0  # DPO: NLL on the chosen image (the paper uses one)
    kl_weight: float = 0.0  # SFT: KL anchor to the pre-round model
    und_anchor: float = 0.0  # weight of the understanding anchor (caption ranking of the batch's images vs the pre-round model)
    und_replay: float = 0.0  # weight of the understanding replay (the pretraining captioning and yes/no loss on fresh renders)
    gen_replay: float = 0.0  # weight of the generation replay (the pretraining generation loss on fresh renders of `train` prompts)
    und_flawed: int = 0  # flawed renders per replay batch, captioned as showing no prompt (the judge's reject caption)
    und_batch: int = 32  # renders per understanding-replay batch (pretraining's): the replay is most of a step's time
    modules: str = "lm"
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
    n: int = 8
    seed: int = 0
    pool: str = "train+heldout"
    judge_mode: str = "likelihood"
    threshold: float = 0.5  # accept when the judge's p_yes >= threshold
    max_per_prompt: int = 0  # SFT: keep at most this many accepted candidates per prompt (0: all)
    balance: bool = False  # SFT: every prompt with an accepted candidate gives exactly max_per_prompt rows
    focus: float = 1.0  # SFT: a prompt accepted more often than this gives `solved_rows` rows only (1: off)
    solved_rows: int = 1  # SFT: rows a prompt above `focus` gives (0: none)
    min_accept_rate: float = 0.0  # SFT: a prompt accepted less often than this gives no rows
    cfg: float = 1.5  # candidate sampling: low guidance and temperature (FINDINGS.md)
    temperature: float = 0.7
    canonical: bool = True  # train on decode -> re-encode tokens
    restart: bool = False  # STaR: each round trains the starting model on every round's candidates so far
    train: TrainConfig = field(default_factory=TrainConfig)
    curriculum_epoch: int = 1  # C-SFT / C-DPO: replay the discard pool before this epoch (0-based)
    eval_n: int = 5
    val_n: int = 0  # images per val prompt in each evaluation, the gate's (0: eval_n)
    val_pairs: int = 1  # rendered understanding pairs per val prompt, the gate's understanding sample
    eval_per_category: int = 0  # 0: every prompt of each evaluated split (tests use fewer)
    eval_seed: int = 12345  # fixed: every round is evaluated on the same seeds
    gate_und_tolerance: float = 0.02
    gate_diversity_floor: float = 0.7
    gate_external: bool = True  # also require val external accuracy not to fall (model selection on val)
    gate_ext_tolerance: float = 0.0  # the external check lets val accuracy fall by at most this
    # The gate measures the incumbent again beside the candidate, on a val sample of the round's own
    # seed: the figure it was promoted for is its luckiest (1.5 NU points on average, README).
    gate_fresh_val: bool = False

    @classmethod
    def from_dict(cls, d: dict) -> "LoopConfig":
        """The inverse of `asdict`: a job record's or a loop JSON's settings."""
        return cls(**{**d, "train": TrainConfig(**d["train"])})

    def key(self, start_ref: str, pool_texts: list[str]) -> str:
        """A run's identity: the same command on the same model resumes the same run. Settings at
        their defaults are left out, so a setting added later (its default keeping the old
        behaviour) does not orphan the runs made before it."""
        settings = {k: v for k, v in _changed(asdict(self), asdict(LoopConfig())).items() if k != "rounds"}
        blob = json.dumps({"cfg": settings, "start": start_ref, "pool": pool_texts}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _changed(values: dict, defaults: dict) -> dict:
    """The entries of `values` that differ from `defaults` (nested dicts compared entry by entry)."""
    return {k: _changed(v, defaults[k]) if isinstance(v, dict) else v for k, v in values.items() if v != defaults.get(k)}
