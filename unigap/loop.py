"""The self-improvement loop (docs/method.md), resumable round by round.

One round: sample N candidates per pool prompt -> judge them with the model's own understanding
-> SFT set / DPO pairs / discard pool -> train (SFT or DPO, optionally with the curriculum) ->
evaluate on `val` (the gate) and the reported prompts (by default the world's `test` split, whose
texts no pool, recipe or gate touches) -> promote or reject. The reported evaluation is stored
under the name `heldout` whatever its prompts (`LoopConfig.eval_prompts` says which).

Every step's output goes to the store as content-addressed objects; a round's progress record
names them, and its manifest is written last. Rerunning the same command skips finished rounds
and finished steps, so a killed run continues where it stopped and recomputes nothing finished.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from unigap import world
from unigap.backend import Backend, LocalBackend
from unigap.candidates import Sampling
from unigap.config import POOLS, SAMPLER, LoopConfig
from unigap.evaluate import check_judge_fits, generate_and_judge, rendered_understanding, select_prompts
from unigap.evaluators import SHAPES, Evaluator, get_evaluator
from unigap.prompts import as_prompts, in_world, load_prompts
from unigap.score import gap_summary, win_rate
from unigap.store import records as rec
from unigap.store.base import Store
from unigap.train.data import (
    Candidates,
    concat_candidates,
    get_candidates,
    get_round_data,
    put_candidates,
    put_round_data,
    split_for,
)
from unigap.train.round import TrainJob, collect


def baseline_record(c: LoopConfig, start_ref: str) -> str:
    """Where the starting model's evaluation (round 0) is kept: shared by every run from that model
    with the same evaluation settings."""
    settings = [c.judge_mode, c.eval_n, c.eval_seed, c.eval_per_category, start_ref]
    settings += ([c.val_n] if c.val_n else []) + ([{"val_pairs": c.val_pairs}] if c.val_pairs != 1 else [])
    settings += [{"evaluator": c.evaluator}] if c.evaluator != "shapes" else []
    for split, value in (("heldout", c.eval_prompts), ("val", c.val_prompts)):
        if value:  # the prompts' texts, not the file's name: an edited file is another evaluation
            settings.append({split: [p.text for p in evaluation_prompts(value, split)]})
    blob = json.dumps(settings)  # the val sample only when set: baselines stored before keep their key
    return f"baselines/{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def pool_texts(pool: str, judge_mode: str = "likelihood") -> list[str]:
    """Prompt TEXTS of the pool (never labels): a named pool (its splits' texts, in the order
    named), a file, or an object in S3 (`s3://bucket/key`, read with the store's UNIGAP_S3_*
    settings, so a scheduled loop takes the pool a team last uploaded); a file or object holds
    one prompt per line, each one the `judge_mode` judge can judge (free text needs a judge other
    than likelihood). An object that is missing is a ValueError; S3 unreachable, a StoreError."""
    if pool in POOLS:
        return [s.text for name in pool.split("+") for s in world.split(name)]
    if pool.startswith("s3://"):
        from unigap.store import read_s3_object

        try:
            text = read_s3_object(pool).decode()
        except KeyError:
            raise ValueError(f"pool {pool}: no such object (upload the prompts there, one per line)") from None
        except UnicodeDecodeError:
            raise ValueError(f"pool {pool} is not UTF-8 text") from None
        return pool_file_texts(text, pool, judge_mode)
    path = Path(pool)
    if not path.is_file():
        raise ValueError(f"pool {pool!r} is neither {' nor '.join(POOLS)} nor a file nor s3://bucket/key")
    return pool_file_texts(path.read_text(), pool, judge_mode)


def pool_file_texts(text: str, where: str, judge_mode: str = "likelihood") -> list[str]:
    """The prompts of a pool file's text (from a local file or an S3 object named `where`); each
    must be one the `judge_mode` judge can judge (`unigap.evaluate.check_judge_fits`)."""
    texts = [line.strip() for line in text.splitlines() if line.strip()]
    if not texts:
        raise ValueError(f"pool file {where} has no prompts")
    for i, t in enumerate(texts, 1):
        try:
            check_judge_fits(judge_mode, t)
        except ValueError as e:
            raise ValueError(f"{where}:{i}: {e}") from None
    return texts


def prompts_file(path: str, split: str) -> list:
    """The prompts of an --eval-prompts / --val-prompts file (`unigap.prompts.load_prompts`);
    ValueError naming the option when it is missing or bad."""
    option = "--eval-prompts" if split == "heldout" else "--val-prompts"
    try:
        return load_prompts(path)
    except FileNotFoundError:
        raise ValueError(f"{option} {path}: no such file") from None
    except ValueError as e:
        raise ValueError(f"{option} {e}") from None


def evaluation_prompts(value: str, split: str, per_category: int = 0) -> list:
    """The prompts of the reported evaluation (`split` "heldout", `value` its --eval-prompts) or of
    the gate's (`split` "val", --val-prompts): "" is the world's split named `split`, a world
    split's name (test, heldout, ...) that split, anything else a prompts file; at most
    `per_category` per category (0: all)."""
    if not value or value in world.SPLIT_NAMES:
        return evaluated_specs(value or split, per_category)
    return select_prompts(prompts_file(value, split), per_category)


def evaluated_in_world(cfg: LoopConfig) -> bool:
    """Whether a run's reported evaluation is on a split of the shapes world (not a prompts file)."""
    return not cfg.eval_prompts or cfg.eval_prompts in world.SPLIT_NAMES


def diversity(tokens: np.ndarray, prompt_index: np.ndarray) -> float:
    """Mean share of differing image tokens between candidates of the same prompt."""
    scores = []
    for p in np.unique(prompt_index):
        t = tokens[prompt_index == p]
        if len(t) > 1:
            diff = (t[:, None, :] != t[None, :, :]).mean(-1)
            scores.append(diff[np.triu_indices(len(t), 1)].mean())
    return float(np.mean(scores)) if scores else 0.0


def evaluated_specs(split: str, per_category: int) -> list:
    return select_prompts(world.split(split), per_category)


def evaluate_split(
    generator,
    judge,
    specs: list,
    n: int,
    seed: int,
    progress: bool,
    und_pairs: int = 1,
    evaluator: Evaluator = SHAPES,
) -> tuple[dict, dict]:
    """Figures of one split with fixed seeds (n images and `und_pairs` rendered understanding
    pairs per prompt), and the arrays a later win rate needs.

    `specs` are the world's specs or free-text prompts. The evaluator's figures (gen_acc,
    und_acc_own, by_category) count the images it could tell and are None where it told none;
    `und_acc` (rendered pairs) is None unless every prompt is the world's (only it renders)."""
    res = generate_and_judge(generator, judge, specs, Sampling(n=n, seed=seed), progress, evaluator)
    rows, known, correct = res["specs"], res["known"], res["correct"]
    judged = res["judged"]
    summary = gap_summary(judged.accepted, correct, len(specs), judged.prompt_index, known)
    summary["und_acc_own"] = summary.pop("und_acc")
    rendered = rendered_understanding(judge, specs, seed, und_pairs) if in_world(specs) else None
    summary["und_acc"] = None if rendered is None else float(rendered.mean())
    summary["diversity"] = diversity(judged.tokens, judged.prompt_index)
    summary["by_category"] = {}
    for c in dict.fromkeys([*world.CATEGORIES, *(s.category for s in rows)]):
        told = np.array([s.category == c for s in rows], bool) & known
        if told.any():
            summary["by_category"][c] = float(correct[told].mean())
    arrays = {
        "images": judged.images,
        "accepted": judged.accepted,
        "correct": correct,
        "prompt_index": judged.prompt_index,
    }
    if not known.all():  # stored only where the evaluator could not tell on some image
        arrays["known"] = known
    return summary, arrays


def heldout_arrays(store: Store, ev: dict, specs: list) -> tuple[dict, list[str]]:
    """A stored evaluation's reported images, verdicts and judgments, with the prompt of each image
    (`specs`: the evaluated prompts, `evaluation_prompts` of the run's settings). `known` (where
    the evaluator could tell) is everywhere True unless the evaluation stored it."""
    a = rec.get_arrays(store, ev["heldout_arrays"])
    a.setdefault("known", np.ones(len(a["correct"]), bool))
    return a, [specs[i].text for i in a["prompt_index"]]


def _figures(split: dict) -> dict:
    """A split's figures as a run's JSON reports them beside held-out (val, novel, the gate's sample)."""
    return {k: split[k] for k in ("nu", "gen_acc", "und_acc", "diversity")}


class Loop:
    def __init__(
        self,
        cfg: LoopConfig,
        store: Store,
        cache: Path,
        start_model: Path,
        progress: bool = True,
        log: Callable[[str], None] = print,
        backend: Backend | None = None,
        device: str = "cpu",
    ):
        self.cfg, self.store, self.cache, self.progress, self.log = cfg, store, Path(cache), progress, log
        self.pool = pool_texts(cfg.pool, cfg.judge_mode)
        if (cfg.train.und_replay or cfg.train.gen_replay) and not in_world(as_prompts(self.pool)):
            # the replays train on the shapes world's pretraining renders: a model of one's own must not
            raise ValueError(
                f"--pool {cfg.pool} is free text, but --und-replay and --gen-replay replay the shapes world's "
                "pretraining renders: set both to 0 for a model of your own"
            )
        self.evaluator = get_evaluator(cfg.evaluator)
        self.specs = {split: evaluation_prompts(value, split, cfg.eval_per_category) for split, value in self._files()}
        for split, specs in self.specs.items():
            for p in specs:
                try:
                    check_judge_fits(cfg.judge_mode, p.text)
                except ValueError as e:
                    option = "--eval-prompts" if split == "heldout" else "--val-prompts"
                    raise ValueError(f"{option}: {e}") from None
        # novel holds compositions neither branch saw (the judge rejects everything there): evaluated
        # only beside the whole heldout split, as runs made before the test split were
        self.novel = () if cfg.eval_prompts else ("novel",)
        self.start_ref = rec.put_checkpoint(store, start_model)
        files = {split: [p.text for p in self.specs[split]] for split, path in self._files() if path}
        self.run = f"runs/{cfg.key(self.start_ref, self.pool, files)}"
        self.backend = backend or LocalBackend(store, cache, cfg.judge_mode, progress, log, device)

    def _files(self) -> tuple[tuple[str, str], ...]:
        """Each evaluated split with its prompts ("": the world's split of that name)."""
        return (("heldout", self.cfg.eval_prompts), ("val", self.cfg.val_prompts))

    # ------------------------------------------------------------------ store helpers
    def _step(self, r: int, progress: dict, name: str, compute: Callable[[], str]) -> str:
        """Run a step once: its object address is recorded; a rerun reads it back."""
        if name not in progress:
            progress[name] = compute()
            rec.put_record_json(self.store, f"{self._round_key(r)}/progress.json", progress)
        else:
            self.log(f"  round {r}: {name} done already, reused")
        return progress[name]

    def _round_key(self, r: int) -> str:
        """Round 0 (the starting model's evaluation) is shared by every run from the same model
        with the same evaluation settings; later rounds belong to their run."""
        return baseline_record(self.cfg, self.start_ref) if r == 0 else f"{self.run}/round-{r}"

    def manifest(self, r: int) -> dict | None:
        return rec.get_record_json(self.store, f"{self._round_key(r)}/manifest.json")

    def completed_rounds(self) -> int:
        """How many rounds of this run are finished (their manifests written)."""
        r = 0
        while self.manifest(r + 1) is not None:
            r += 1
        return r

    def extend(self, more: int) -> None:
        """Aim at `more` rounds beyond those finished (a scheduled job's "one more round")."""
        self.cfg.rounds = self.completed_rounds() + more

    def head(self, before: int) -> tuple[str, int]:
        """The last promoted checkpoint before round `before` (derived from manifests, never stored apart)."""
        for r in range(before - 1, 0, -1):
            m = self.manifest(r)
            if m and m["promoted"]:
                return m["checkpoint"], r
        return self.start_ref, 0

    # ------------------------------------------------------------------ steps
    def _measure(self, ref: str, splits: tuple[str, ...], seed: int) -> tuple[dict, dict]:
        """The figures of each split for one model, and the held-out images and verdicts (if evaluated)."""
        out, arrays = {}, {}
        generator, judge = self.backend.generator(ref), self.backend.judge(ref, self.cfg.threshold)
        for split in splits:
            n = {"val": self.cfg.val_n or self.cfg.eval_n, "novel": max(2, self.cfg.eval_n // 2)}.get(
                split, self.cfg.eval_n
            )
            specs = self.specs.get(split) or evaluated_specs(split, self.cfg.eval_per_category)
            pairs = self.cfg.val_pairs if split == "val" else 1
            out[split], arr = evaluate_split(generator, judge, specs, n, seed, self.progress, pairs, self.evaluator)
            if split == "heldout":
                arrays = arr
        return out, arrays

    def _evaluate(self, ref: str, splits: tuple[str, ...]) -> str:
        out, arrays = self._measure(ref, splits, self.cfg.eval_seed)
        out["heldout_arrays"] = rec.put_arrays(self.store, **arrays)
        return rec.put_json(self.store, out)

    def _gate_sample(self, incumbent: str, candidate: str, r: int) -> str:
        """The incumbent and the candidate on a val sample of round r's own seed (--gate-fresh-val)."""
        seed = self.cfg.eval_seed * 1000 + r  # no training round samples with it
        return rec.put_json(
            self.store,
            {
                who: self._measure(ref, ("val",), seed)[0]["val"]
                for who, ref in (("old", incumbent), ("new", candidate))
            },
        )

    def _gate(self, o: dict, n: dict) -> tuple[bool, list[str], list[str]]:
        """Promote only if val NU falls, diversity holds, and rendered understanding and external
        accuracy hold (within their tolerances). `o`, `n`: the old and new model's val figures.

        Returns (promoted, reasons it was not, checks that were absent): rendered understanding
        is absent on prompts outside the shapes world, external accuracy where the evaluator
        told on no val image (--evaluator none); an absent check neither promotes nor rejects."""
        c = self.cfg
        reasons, absent = [], []
        if not n["nu"] < o["nu"]:
            reasons.append(f"val NU did not fall ({o['nu']:.3f} -> {n['nu']:.3f})")
        if n["diversity"] < c.gate_diversity_floor * o["diversity"]:
            reasons.append(f"diversity collapsed ({o['diversity']:.3f} -> {n['diversity']:.3f})")
        if o["und_acc"] is None or n["und_acc"] is None:
            absent.append("val understanding (rendered pairs exist only for the shapes world's prompts)")
        elif n["und_acc"] < o["und_acc"] - c.gate_und_tolerance:
            reasons.append(f"val understanding fell ({o['und_acc']:.3f} -> {n['und_acc']:.3f})")
        if c.gate_external and (o["gen_acc"] is None or n["gen_acc"] is None):
            absent.append(f"val external accuracy (evaluator {c.evaluator} told on no val image)")
        elif c.gate_external and n["gen_acc"] < o["gen_acc"] - c.gate_ext_tolerance:
            reasons.append(f"val external accuracy fell ({o['gen_acc']:.3f} -> {n['gen_acc']:.3f})")
        return not reasons, reasons, absent

    # ------------------------------------------------------------------ the loop
    def run_all(self) -> dict:
        cfg = self.cfg
        zero = self.manifest(0)
        if zero is None:
            progress = rec.get_record_json(self.store, f"{self._round_key(0)}/progress.json") or {}
            ev = self._step(
                0, progress, "eval", lambda: self._evaluate(self.start_ref, ("val", "heldout", *self.novel))
            )
            zero = {
                "round": 0,
                "checkpoint": self.start_ref,
                "eval": ev,
                "promoted": True,
                "n_sft": 0,
                "n_pairs": 0,
                "n_discard": 0,
            }
            rec.put_record_json(self.store, f"{self._round_key(0)}/manifest.json", zero)
        rows = [self._row(zero)]
        self.log(self._describe(rows[-1]))
        for r in range(1, cfg.rounds + 1):
            m = self.manifest(r)
            if m is None:
                m = self._round(r)
            rows.append(self._row(m))
            self.log(self._describe(rows[-1]))
        return {"run": self.run, "config": asdict(cfg), "sampler": SAMPLER, "rounds": rows}

    def _round(self, r: int) -> dict:
        cfg = self.cfg
        progress = rec.get_record_json(self.store, f"{self._round_key(r)}/progress.json") or {}
        base_ref, base_round = self.head(r)
        progress.setdefault("base", base_ref)
        base_ref = progress["base"]
        self.log(f"round {r}: from the model of round {base_round}")
        cand = self._step(r, progress, "candidates", lambda: self._candidates_ref(base_ref, r))
        data_ref = self._step(
            r, progress, "data", lambda: put_round_data(self.store, split_for(self._training_candidates(r, cand), cfg))
        )
        data = get_round_data(self.store, data_ref)
        if not data.sft and not data.pairs:
            self.log(f"  round {r}: no accepted sample and no pair: nothing to train on; the round keeps the model")
        job = TrainJob(base=self.trains_from(base_ref), data=data_ref, loop=asdict(cfg), round=r)
        ckpt = self._step(r, progress, "checkpoint", lambda: json.dumps(self.backend.train(job)))
        ckpt_ref, train_log = json.loads(ckpt)
        ev = self._step(
            r,
            progress,
            "eval",
            lambda: self._evaluate(ckpt_ref, ("val", "heldout") + (self.novel if r == cfg.rounds else ())),
        )
        old_eval = rec.get_json(self.store, self.manifest(base_round)["eval"])
        new_eval = rec.get_json(self.store, ev)
        trained = ckpt_ref != job.base
        gate_ref, old_val, new_val = None, old_eval["val"], new_eval["val"]
        if trained and cfg.gate_fresh_val:
            gate_ref = self._step(r, progress, "gate_eval", lambda: self._gate_sample(base_ref, ckpt_ref, r))
            sample = rec.get_json(self.store, gate_ref)
            old_val, new_val = sample["old"], sample["new"]
        promoted, reasons, absent = self._gate(old_val, new_val) if trained else (False, ["nothing was trained"], [])
        m = {
            "round": r,
            "base": base_ref,
            "trained_from": job.base,
            "checkpoint": ckpt_ref,
            "eval": ev,
            "promoted": promoted,
            "reasons": reasons,
            "candidates": cand,
            "data": data_ref,
            "train_log": train_log,
            "n_sft": len(data.sft),
            "n_pairs": len(data.pairs),
            "n_discard": len(data.discard),
            "win_rate": self._win_rate(old_eval, ckpt_ref if trained else None),
        }
        if gate_ref:
            m["gate_eval"] = gate_ref
        if absent:  # only where a check could not run, so a shapes-world round's manifest is as before
            m["gate_absent"] = absent
        rec.put_record_json(self.store, f"{self._round_key(r)}/manifest.json", m)  # last: the round is done
        return m

    def trains_from(self, head: str) -> str:
        """The model a round trains: the head (the last promoted model), or the start for restart
        rounds without `warm` (STaR)."""
        return self.start_ref if self.cfg.restart and not self.cfg.warm else head

    def _candidates_ref(self, ref: str, r: int) -> str:
        generator, judge = self.backend.generator(ref), self.backend.judge(ref, self.cfg.threshold)
        c = collect(generator, judge, self.pool, self.cfg, self.cfg.seed * 1000 + r, self.progress)
        return put_candidates(self.store, c)

    def _training_candidates(self, r: int, cand: str) -> Candidates:
        """Round r's candidates; with `restart`, those of every round of the run so far (STaR:
        each round fine-tunes the starting model on all it has found, instead of piling one
        round's drift on the last; with `warm`, the last promoted model, so the epochs add up)."""
        earlier = [self.manifest(k)["candidates"] for k in range(1, r)] if self.cfg.restart else []
        return concat_candidates([get_candidates(self.store, ref) for ref in earlier + [cand]])

    def _win_rate(self, old_eval: dict, new_ref: str | None) -> dict:
        """Old vs new judge on the OLD model's held-out images, decided by the external evaluator
        (on the images it could tell; None without an evaluator)."""
        if new_ref is None or not self.evaluator.measures:
            return {"win_rate": None, "n_disagree": 0}
        a, prompts = heldout_arrays(self.store, old_eval, self.specs["heldout"])
        new = self.backend.judge(new_ref, self.cfg.threshold).score(a["images"], prompts).decision
        k = a["known"]
        return win_rate(a["accepted"][k], new[k], a["correct"][k])

    def _row(self, m: dict) -> dict:
        ev = rec.get_json(self.store, m["eval"])
        h = ev["heldout"]
        row = {
            "round": m["round"],
            "nu": h["nu"],
            "nu_ci": h["nu_ci"],
            "gen_acc": h["gen_acc"],
            "und_acc": h["und_acc"],
            "und_acc_own": h["und_acc_own"],
            "win_rate": (m.get("win_rate") or {}).get("win_rate"),
            "n_disagree": (m.get("win_rate") or {}).get("n_disagree", 0),
            "promoted": m["promoted"],
            "n_sft": m["n_sft"],
            "n_pairs": m["n_pairs"],
            "n_discard": m["n_discard"],
            "diversity": h["diversity"],
            "by_category": h["by_category"],
            "val": _figures(ev["val"]),
            "reasons": m.get("reasons", []),
            "checkpoint": m["checkpoint"],
        }
        if "novel" in ev:
            row["novel"] = _figures(ev["novel"])
        if m.get("gate_absent"):  # the gate's checks that could not run (no evaluator, prompts outside the world)
            row["gate_absent"] = m["gate_absent"]
        if m.get("gate_eval"):  # what the gate compared: the incumbent and this round's model on a fresh val sample
            sample = rec.get_json(self.store, m["gate_eval"])
            row["gate_val"] = {who: _figures(sample[who]) for who in ("old", "new")}
        return row

    def heldout_samples(self, r: int) -> tuple[np.ndarray, list[str], np.ndarray]:
        """Round r's held-out evaluation images (fixed seeds), their prompts and verdicts."""
        a, prompts = heldout_arrays(
            self.store, rec.get_json(self.store, self.manifest(r)["eval"]), self.specs["heldout"]
        )
        return a["images"], prompts, a["correct"]

    @staticmethod
    def _describe(row: dict) -> str:
        def f(x):
            return "-" if x is None else f"{x:.3f}"  # a figure the evaluator or the world could not give

        s = f"round {row['round']}: NU {f(row['nu'])}  gen {f(row['gen_acc'])}  und {f(row['und_acc'])}"
        s += f"  div {f(row['diversity'])}"
        if row["round"]:
            s += f"  sft {row['n_sft']} pairs {row['n_pairs']} discard {row['n_discard']}  "
            s += "PROMOTED" if row["promoted"] else "rejected: " + "; ".join(row["reasons"])
            if row.get("gate_absent"):
                s += "  (absent: " + "; ".join(row["gate_absent"]) + ")"
        return s
