"""`unigap score` figures (`unigap.evaluate.gap_report`) <-> the GapFigures / NonUnificationResult messages.

The dicts keep gap_summary's keys, so service and library results compare directly. A figure
that does not exist (e.g. ext_agreement when nothing was rejected) is None in a dict and NaN on
the wire (proto3 doubles have no null).
"""

from __future__ import annotations

import math

from services.api import judge_pb2 as pb


def _wire(x) -> float:
    return math.nan if x is None else float(x)


def _dict(x: float):
    return None if math.isnan(x) else x


def to_figures(summary: dict) -> pb.GapFigures:
    lo, hi = summary["nu_ci"]
    return pb.GapFigures(
        nu=_wire(summary["nu"]),
        nu_low=_wire(lo),
        nu_high=_wire(hi),
        gen_acc=_wire(summary["gen_acc"]),
        und_acc=_wire(summary["und_acc"]),
        ext_agreement=_wire(summary["ext_agreement"]),
        n_images=summary["n_images"],
        n_prompts=summary["n_prompts"],
        judge_precision=_wire(summary["judge_precision"]),
        coverage=_wire(summary["coverage"]),
        judge_coverage=_wire(summary["judge_coverage"]),
        n_evaluated=summary["n_evaluated"],
    )


def from_figures(f: pb.GapFigures) -> dict:
    return {
        "nu": _dict(f.nu),
        "nu_ci": [f.nu_low, f.nu_high],
        "gen_acc": _dict(f.gen_acc),
        "und_acc": _dict(f.und_acc),
        "ext_agreement": _dict(f.ext_agreement),
        "n_images": f.n_images,
        "n_prompts": f.n_prompts,
        "judge_precision": _dict(f.judge_precision),
        "coverage": _dict(f.coverage),
        "judge_coverage": _dict(f.judge_coverage),
        "n_evaluated": f.n_evaluated,
    }


def to_result(report: dict, checkpoint: str, evaluator: str) -> pb.NonUnificationResult:
    return pb.NonUnificationResult(
        overall=to_figures(report["overall"]),
        by_category={k: to_figures(v) for k, v in report["by_category"].items()},
        by_tier={k: to_figures(v) for k, v in report["by_tier"].items()},
        checkpoint=checkpoint,
        evaluator=evaluator,
    )


def from_result(r: pb.NonUnificationResult) -> dict:
    return {
        "overall": from_figures(r.overall),
        "by_category": {k: from_figures(v) for k, v in r.by_category.items()},
        "by_tier": {k: from_figures(v) for k, v in r.by_tier.items()},
        "checkpoint": r.checkpoint,
        "evaluator": r.evaluator,
    }
