"""Settings of sampling, the judge, the loop and its trainer: plain dataclasses, importable without torch.

Each setting is declared once, here: its default, its help text (`field(metadata={"help": ...})`), the
group it is shown in and its command-line flag, and its validation (`__post_init__` raises ValueError
naming the option). The CLI derives its options from these fields and recipes (unigap/recipes.py)
are read into them, so a new setting touches this file only.

Metadata keys of a field: `help` (one or two sentences: what it does and why), `group` (the `--help`
panel), `flag` (the option; absent: derived from the name, None: recipes and `--set` only).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

METHODS = ("sft", "dpo", "c-sft", "c-dpo")
POOLS = ("pool+val", "pool", "train+heldout", "train", "heldout+val")  # named pools: splits joined by "+"
MODULES = ("lm", "lm+head")
# The noise the sampler draws (unigap/model/adapter.py: step_gumbel), by name: a loop JSON records it, so
# runs sampled by another noise (the same distribution, other samples) are told apart in docs/results.md.
SAMPLER = "counter-gumbel"
JUDGE_MODES = ("probability", "decision", "likelihood")  # the judge's readings (unigap/model/judge.py)
BUILT_IN_EVALUATORS = ("shapes", "none")  # unigap/evaluators.py's built-ins (named here: this module needs no numpy)
CONTROL_ARMS = ("render", "oracle", "judge", "all")  # `unigap controls` (unigap/controls.py)
YES_NO = 8  # yes/no rows of each understanding batch, pretraining's and the replay's (its first renders asked)

GROUPS = ("Run", "Sampling", "SFT set", "Training", "Gate", "Evaluation")  # `--help` panels, in this order


def setting(default: Any, help: str, group: str, flag: str | None = "", factory: Any = None) -> Any:
    """A dataclass field carrying its help text, `--help` group and flag ("": `--name-with-dashes`)."""
    meta = {"help": help, "group": group, "flag": flag}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def flag(cls: type, name: str) -> str:
    """The command-line option of a field: its `flag`, or its name with dashes (also for recipe-only fields,
    so an error names the setting the way a user would type it)."""
    f = {f.name: f for f in fields(cls)}[name]
    return f.metadata.get("flag") or "--" + name.replace("_", "-")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass
class Sampling:
    """How candidates are sampled: N per prompt with classifier-free guidance at a temperature.

    Low guidance and temperature by default: a weak generator's samples at high guidance collapse
    onto few images, and the loop needs varied candidates for the judge to choose among."""

    n: int = setting(4, "Images sampled per prompt.", "Sampling")
    seed: int = setting(0, "Sampling seed (fixed seeds make runs comparable).", "Sampling")
    cfg: float = setting(1.5, "Classifier-free guidance scale (1: no guidance).", "Sampling")
    temperature: float = setting(0.7, "Sampling temperature (0: greedy).", "Sampling")
    batch_prompts: int = setting(32, "Prompts sampled together (memory, not results).", "Sampling", None)
    best_of: int = setting(
        1,
        "Each image is the model's own judge's pick among this many samples (its "
        "understanding as a verifier at generation time).",
        "Sampling",
    )

    def __post_init__(self):
        _check(self.n >= 1, f"--n must be at least 1, not {self.n}")
        _check(self.best_of >= 1, f"--best-of must be at least 1, not {self.best_of}")
        _check(self.batch_prompts >= 1, f"batch_prompts must be at least 1, not {self.batch_prompts}")
        _check_sampling(self.cfg, self.temperature)


def _check_sampling(cfg: float, temperature: float) -> None:
    _check(cfg > 0, f"--cfg (guidance scale) must be > 0, not {cfg}")
    _check(temperature >= 0, f"--temperature must be >= 0 (0: greedy), not {temperature}")


@dataclass
class JudgeSettings:
    """How the model's own understanding judges an image against its prompt (unigap/model/judge.py)."""

    mode: str = setting(
        "likelihood",
        "The judge's reading of the understanding branch: likelihood (the prompt's "
        "caption against competitors; shapes-world prompts), probability (p_yes) or "
        "decision (the parsed answer).",
        "SFT set",
        "--mode",
    )
    threshold: float = setting(0.5, "The judge accepts an image when its p_yes >= threshold.", "SFT set")

    def __post_init__(self):
        _check_judge(self.mode, self.threshold)


def _check_judge(mode: str, threshold: float) -> None:
    _check(mode in JUDGE_MODES, f"--mode must be one of {', '.join(JUDGE_MODES)}, not {mode!r}")
    _check(0 < threshold < 1, f"--threshold is a probability in (0, 1), not {threshold}")


@dataclass
class TrainConfig:
    """One round's training: SFT or DPO on the round's data, with optional anchors and replays that keep
    what pretraining taught while generation trains hard."""

    # With und_every 4 a step costs half of one with the replay each batch: 6 epochs in the time of 3.
    epochs: int = setting(6, "Epochs over each round's data.", "Training")
    lr: float = setting(1e-3, "Learning rate of each round.", "Training")
    batch: int = setting(16, "Rows per training batch.", "Training", None)
    beta: float = setting(0.1, "DPO beta (temperature of the preference loss).", "Training")
    nll_weight: float = setting(1.0, "DPO: weight of the NLL on the chosen image (the paper uses one).", "Training")
    kl_weight: float = setting(0.0, "SFT: weight of the KL anchor to the pre-round model.", "Training")
    und_anchor: float = setting(
        0.0,
        "Weight of the understanding anchor: KL of the judge's caption distributions on each batch's images to "
        "the pre-round model's (keeps understanding while generation trains hard).",
        "Training",
    )
    und_replay: float = setting(
        1.0,
        "Weight of the understanding replay: each training step adds the pretraining understanding loss "
        "(captions and yes/no) on fresh renders, so the judge keeps what it knew.",
        "Training",
    )
    gen_replay: float = setting(
        1.0,
        "Weight of the generation replay: each training step adds the pretraining generation loss on fresh "
        "renders of `train` prompts (never an evaluated one), so a round that trains only where the model "
        "fails does not make it forget the rest.",
        "Training",
    )
    und_flawed: int = setting(
        0,
        "With --und-replay: flawed renders (an extra object, a squashed or bitten shape) per replayed batch, "
        "captioned as showing no prompt, so the judge learns to refuse errors its clean-scene negatives never "
        "showed it.",
        "Training",
    )
    und_batch: int = setting(
        32,
        "With --und-replay: renders captioned per replayed batch (pretraining's 32). The replay takes about "
        "two thirds of a training step's time at 32.",
        "Training",
    )
    und_every: int = setting(
        4,
        "With --und-replay: the replay joins one batch in this many (drawn per batch) at this many times its "
        "weight: the same expected gradient for that fraction of its cost (1: every batch).",
        "Training",
    )
    modules: str = setting("lm+head", "What trains: lm (the shared language model) or lm+head.", "Training")
    lora_rank: int = setting(
        0,
        "Train the language model through LoRA adapters of this rank (peft; merged into "
        "the checkpoint). 0: full weights.",
        "Training",
    )
    seed: int = setting(0, "Training seed (the loop sets it per round from its own).", "Training", None)

    def __post_init__(self):
        _check(self.epochs >= 1, f"--epochs must be at least 1, not {self.epochs}")
        _check(self.batch >= 1, f"--set train.batch must be at least 1, not {self.batch}")
        _check(self.lr > 0 and self.beta > 0, f"--lr and --beta must be > 0, not {self.lr} and {self.beta}")
        _check(min(self.nll_weight, self.kl_weight) >= 0, "--nll-weight and --kl-weight must be >= 0")
        _check(self.modules in MODULES, f"--modules must be one of {', '.join(MODULES)}, not {self.modules!r}")
        _check(self.lora_rank >= 0, f"--lora-rank must be >= 0 (0: full weights), not {self.lora_rank}")
        _check(
            min(self.und_anchor, self.und_replay, self.gen_replay) >= 0,
            "--und-anchor, --und-replay and --gen-replay must be >= 0",
        )
        _check(
            self.und_batch >= YES_NO,
            f"--und-batch must be >= {YES_NO} (the replay asks yes/no of its first {YES_NO} renders), "
            f"not {self.und_batch}",
        )
        _check(self.und_every >= 1, f"--und-every must be >= 1 (1: the replay joins every batch), not {self.und_every}")
        # Flawed renders ride in the understanding replay's batches, so they need the replay.
        _check(
            self.und_flawed >= 0 and (not self.und_flawed or self.und_replay),
            f"--und-flawed must be >= 0 and needs --und-replay > 0 (it adds to the replayed batch), "
            f"got {self.und_flawed} with --und-replay {self.und_replay}",
        )

    @property
    def regularised(self) -> bool:
        """Whether a step adds the anchor or a replay (unigap/train/round.py: regulariser)."""
        return bool(self.und_anchor or self.und_replay or self.gen_replay)


@dataclass
class LoopConfig:
    """The self-improvement loop's recipe (unigap/loop.py): what a run samples, keeps, trains and gates on.

    `seed` is the run's (a recipe leaves it to `--seed`); everything else is the recipe."""

    rounds: int = setting(3, "Self-improvement rounds: the run's target (rerunning resumes the same run).", "Run")
    method: str = setting("sft", "sft, dpo, c-sft or c-dpo (c-: with the discard-pool curriculum).", "Run")
    n: int = setting(32, "Candidates sampled per prompt and round.", "Sampling")
    seed: int = setting(0, "Training seed (evaluation seeds are fixed).", "Run")
    pool: str = setting(
        "pool+val",
        "Prompt TEXTS to improve on: pool+val (the world's pool split and the gate's val: never a test text), "
        "pool, train+heldout, train, heldout+val (heldout holds test: its figures are then test-time "
        "improvement), or a file (free text: --mode probability or decision).",
        "Run",
    )
    evaluator: str = setting(
        "shapes",
        "External evaluator of the evaluations (never of training): shapes (the shapes world's exact one), none "
        "(NU and diversity only: its figures and gate check are absent) or module:callable.",
        "Evaluation",
    )
    eval_prompts: str = setting(
        "test",
        "Prompts of the reported evaluation: a split of the world (test: texts no pool, recipe or gate touches; "
        "heldout, as runs before the test split; empty: heldout) or a prompts file (one per line, .json or .jsonl "
        "as `unigap score` reads; free text needs --mode probability or decision).",
        "Evaluation",
    )
    val_prompts: str = setting(
        "",
        "Prompts of the gate's val evaluation (as --eval-prompts; empty: the world's val split).",
        "Gate",
    )
    judge_mode: str = setting(
        JudgeSettings.mode, "The model's own judge: likelihood, probability or decision.", "SFT set", "--mode"
    )
    threshold: float = setting(
        JudgeSettings.threshold, "The judge accepts a candidate when p_yes >= threshold.", "SFT set"
    )
    max_per_prompt: int = setting(16, "SFT: at most this many accepted candidates per prompt (0: all).", "SFT set")
    balance: bool = setting(
        True,
        "SFT: every prompt with an accepted candidate gives exactly --max-per-prompt rows (its accepted ones "
        "repeated), so rare successes weigh as much as easy ones.",
        "SFT set",
    )
    focus: float = setting(
        0.5,
        "SFT: a prompt whose share of accepted candidates is above this gives --solved-rows rows only (1: off), "
        "so training goes where the model still fails.",
        "SFT set",
    )
    solved_rows: int = setting(
        4, "SFT: rows a prompt above --focus gives (0: none; then hold the rest with --gen-replay).", "SFT set"
    )
    min_accept_rate: float = setting(
        0.0,
        "SFT: a prompt whose share of accepted candidates is below this gives no rows (rare accepts are mostly "
        "the judge's errors: `unigap audit`).",
        "SFT set",
    )
    cfg: float = setting(
        Sampling.cfg,
        "Guidance scale of the candidates (low, so a weak generator's candidates stay varied).",
        "Sampling",
    )
    temperature: float = setting(
        Sampling.temperature, "Sampling temperature of the candidates (0: greedy).", "Sampling"
    )
    canonical: bool = setting(
        True, "Train on canonical tokens (decode, then re-encode) rather than the sampled ones.", "SFT set"
    )
    restart: bool = setting(
        True,
        "Each round trains on the candidates of every round so far (sampled by the last promoted model), from "
        "the model --warm says, instead of training the last promoted model on its own round's "
        "(--no-restart).",
        "Run",
    )
    warm: bool = setting(
        True,
        "With --restart: each round trains the last promoted model, not the starting one, on the candidates "
        "of every round so far, so the rounds' epochs add up (--no-warm: from the start, as STaR). Without "
        "--restart the last promoted model trains anyway.",
        "Run",
    )
    train: TrainConfig = setting(
        None, "The trainer's settings (a nested mapping in a recipe).", "Training", None, factory=TrainConfig
    )
    curriculum_epoch: int = setting(
        1,
        "C-SFT / C-DPO: the epoch (counted from 0) before which the discard pool is replayed; with --rounds 1 "
        "and many --epochs this is the paper's one-pass Algorithm 1.",
        "Training",
    )
    # 17 x the 61 test prompts: over 1,000 images, so an evaluation's noise is about +-3 points
    eval_n: int = setting(17, "Images per prompt of the reported evaluation.", "Evaluation")
    val_n: int = setting(
        20,
        "Images per val prompt in each evaluation: the gate's sample (0: --eval-n). More "
        "images make the gate's comparisons less noisy.",
        "Gate",
    )
    val_pairs: int = setting(
        20,
        "Rendered understanding pairs (the prompt's render and a hard negative's) per val prompt: the gate's "
        "understanding sample. With 1 (41 x 2 items), two more errors already fall by more than the 2-point "
        "tolerance.",
        "Gate",
    )
    eval_per_category: int = setting(0, "Evaluate at most this many prompts per category (0: all).", "Evaluation")
    eval_seed: int = setting(
        12345, "Seed of every evaluation, fixed so every round is measured on the same samples.", "Evaluation", None
    )
    gate_und_tolerance: float = setting(0.02, "The gate lets val understanding fall by at most this.", "Gate", None)
    gate_diversity_floor: float = setting(
        0.7, "The gate rejects a round whose diversity falls below this share of the start's.", "Gate", None
    )
    gate_external: bool = setting(
        True, "The gate also requires val external accuracy not to fall (model selection on val).", "Gate"
    )
    gate_ext_tolerance: float = setting(
        0.01,
        "The external check lets val external accuracy fall by at most this (an accuracy, e.g. 0.01: one "
        "point), so a change within the noise of the val sample does not reject a round.",
        "Gate",
    )
    gate_fresh_val: bool = setting(
        False,
        "The gate evaluates the last promoted model again beside the round's model, on a val sample of the "
        "round's own seed, instead of reusing the figure it was promoted for (the luckiest of the samples "
        "it was compared on, so biased low). Costs two val evaluations a round.",
        "Gate",
    )

    def __post_init__(self):
        _check(self.method in METHODS, f"--method must be one of {', '.join(METHODS)}, not {self.method!r}")
        _check(self.rounds >= 1, f"--rounds must be at least 1, not {self.rounds}")
        _check(self.n >= 1 and self.eval_n >= 1, f"--n and --eval-n must be at least 1, not {self.n} and {self.eval_n}")
        _check(
            self.val_n >= 0 and self.val_pairs >= 1,
            f"--val-n must be >= 0 (0: --eval-n) and --val-pairs >= 1, not {self.val_n} and {self.val_pairs}",
        )
        _check(self.eval_per_category >= 0, f"--eval-per-category must be >= 0 (0: all), not {self.eval_per_category}")
        _check(
            0 <= self.gate_ext_tolerance < 1,
            f"--gate-ext-tolerance is an accuracy in [0, 1), not {self.gate_ext_tolerance}",
        )
        _check_sampling(self.cfg, self.temperature)
        _check_judge(self.judge_mode, self.threshold)
        _check(
            self.evaluator in BUILT_IN_EVALUATORS or ":" in self.evaluator,
            f"--evaluator must be one of {', '.join(BUILT_IN_EVALUATORS)} or module:callable, not {self.evaluator!r}",
        )
        _check(isinstance(self.train, TrainConfig), "train must be a TrainConfig (LoopConfig.from_dict reads a dict)")
        if self.method.startswith("c-"):
            _check(
                0 < self.curriculum_epoch < self.train.epochs,
                f"--curriculum-epoch must be between 1 and --epochs - 1 ({self.train.epochs - 1}) "
                f"for {self.method}, not {self.curriculum_epoch}",
            )
        self._check_sft_rule()

    def _check_sft_rule(self) -> None:
        """The SFT set's rule, as `unigap loop` and `unigap controls` share it."""
        _check(self.max_per_prompt >= 0, f"--max-per-prompt must be >= 0 (0: all), not {self.max_per_prompt}")
        _check(
            not self.balance or self.max_per_prompt >= 1,
            "--balance needs --max-per-prompt >= 1 (the rows each prompt gives)",
        )
        _check(0 < self.focus <= 1, f"--focus is an acceptance rate in (0, 1], not {self.focus}")
        _check(self.solved_rows >= 0, f"--solved-rows must be >= 0, not {self.solved_rows}")
        _check(
            0 <= self.min_accept_rate < self.focus,
            f"--min-accept-rate is an acceptance rate in [0, --focus), not {self.min_accept_rate}",
        )

    @property
    def reported_on(self) -> str:
        """The split (or prompts file) the run's figures are measured on: --eval-prompts, "" meaning heldout."""
        return self.eval_prompts or "heldout"

    @classmethod
    def from_dict(cls, d: dict) -> LoopConfig:
        """The inverse of `asdict`: a job record's or a loop JSON's settings. A setting the dict
        lacks (written before the setting existed) takes the value it had then (FIRST), so
        `from_dict({})` is the first defaults and `from_dict({"n": 32})` those but for n."""
        first = first_defaults()
        return cls(**{**first, **d, "train": TrainConfig(**{**first["train"], **d.get("train", {})})})

    def key(self, start_ref: str, pool_texts: list[str], evaluated: dict | None = None) -> str:
        """A run's identity: the same settings on the same model resume the same run. Settings at
        their first defaults (FIRST) are left out, so neither a setting added later (its default
        keeping the old behaviour) nor a changed default orphans the runs made before it.
        `evaluated`: the texts of prompts files the run evaluates on (--eval-prompts,
        --val-prompts), so an edited file starts another run; left out when empty."""
        settings = {k: v for k, v in _changed(asdict(self), first_defaults()).items() if k != "rounds"}
        identity = {"cfg": settings, "start": start_ref, "pool": pool_texts}
        blob = json.dumps({**identity, **({"evaluated": evaluated} if evaluated else {})}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# The defaults before the demo-time recipe became the default: runs are keyed against them, and a
# JSON written before a setting existed meant them. Only settings whose default changed are here.
FIRST = {
    "n": 8,
    "pool": "train+heldout",
    "eval_prompts": "",
    "eval_n": 5,
    "max_per_prompt": 0,
    "balance": False,
    "focus": 1.0,
    "solved_rows": 1,
    "restart": False,
    "warm": False,
    "val_n": 0,
    "val_pairs": 1,
    "gate_ext_tolerance": 0.0,
    "train": {"epochs": 2, "lr": 1e-4, "und_replay": 0.0, "gen_replay": 0.0, "modules": "lm", "und_every": 1},
}


def first_defaults() -> dict:
    """`asdict(LoopConfig())` with the FIRST defaults in place of the changed ones."""
    now = asdict(LoopConfig())
    return {**now, **FIRST, "train": {**now["train"], **FIRST["train"]}}


def _changed(values: dict, defaults: dict) -> dict:
    """The entries of `values` that differ from `defaults` (nested dicts compared entry by entry)."""
    return {
        k: _changed(v, defaults[k]) if isinstance(v, dict) else v for k, v in values.items() if v != defaults.get(k)
    }
