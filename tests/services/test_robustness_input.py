"""Bad input, property-based (hypothesis), against real servers on loopback started once: the
generation server (a tiny random model, for speed) and the judge (Triton + the shipped model),
both as subprocesses with a bearer token.

Every bad request must get INVALID_ARGUMENT naming the offending field (or UNAUTHENTICATED for a
bad token), never INTERNAL or a dead server: after each one, a good request is served.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image
from support.servers import Server

from services.api import generation_pb2 as gpb
from services.api import generation_pb2_grpc, judge_pb2_grpc
from services.api import judge_pb2 as jpb
from services.common.client import channel
from services.common.images import encode_png
from unigap import world

pytest.importorskip("pytriton")

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parents[2]
TOKEN = "input-test-token"
PROMPT = "a red circle left of a blue square"
MAX_BATCH, MAX_PROMPT, MAX_N, MAX_IMAGES = 256, 512, 64, 4096  # the servers' defaults
# Examples per property; UNIGAP_FUZZ_EXAMPLES=500 searches harder (minutes) when hunting.
EXAMPLES = int(os.environ.get("UNIGAP_FUZZ_EXAMPLES", 30))
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
# The judge's properties: each example is two Triton round trips; a failure is reported as found
# (shrinking one took minutes), which keeps the file bounded in time either way.
FEW = settings(PROPERTY, max_examples=max(1, EXAMPLES * 5 // 6), phases=[Phase.explicit, Phase.reuse, Phase.generate])


@pytest.fixture(scope="module")
def servers(tiny_random, tmp_path_factory):
    model = tmp_path_factory.mktemp("models") / "tiny"
    tiny_random.save(model)
    procs = {
        "generation": Server("services.generation", "serving", TOKEN, "--model", str(model)),
        "judge": Server("services.judge", "judge", TOKEN),
    }
    try:
        yield {"generation": procs["generation"].ready()["address"], "judge": procs["judge"].ready()["front"]}
    finally:
        codes = {name: p.stop() for name, p in procs.items()}
    assert codes == {"generation": 0, "judge": 0}  # neither died under the abuse


@pytest.fixture(scope="module")
def gen(servers):
    with channel(servers["generation"], TOKEN) as ch:
        yield generation_pb2_grpc.GenerationServiceStub(ch)


@pytest.fixture(scope="module")
def judge(servers):
    with channel(servers["judge"], TOKEN) as ch:
        yield judge_pb2_grpc.JudgeServiceStub(ch)


GOOD_PNG = encode_png(world.render_batch([world.parse(PROMPT)], [0], 32)[0])


def generate(stub, **fields):
    request = {"prompts": ["a red circle"], "n": 1, "cfg_scale": 1.5, "temperature": 0.7, "seed": 0} | fields
    return list(stub.Generate(gpb.GenerateRequest(**request), timeout=60))


def score(stub, pairs=None, **fields):
    pairs = pairs if pairs is not None else [(GOOD_PNG, PROMPT)]
    request = jpb.ScoreRequest(pairs=[jpb.ImagePrompt(png=png, prompt=p) for png, p in pairs], **fields)
    return stub.Score(request, timeout=60)


def refused(call, field: str | None, code=grpc.StatusCode.INVALID_ARGUMENT) -> str:
    """`call()` fails with `code`, its details naming `field` first; returns the details."""
    with pytest.raises(grpc.RpcError) as e:
        call()
    assert e.value.code() == code, (e.value.code(), e.value.details())
    if field is not None:
        assert e.value.details().startswith(f"{field}: "), e.value.details()
    return e.value.details()


def still_serves_generation(stub):
    replies = generate(stub)
    assert len(replies) == 1 and replies[0].png.startswith(b"\x89PNG")


def still_serves_judge(stub):
    reply = score(stub)
    assert len(reply.judgments) == 1 and 0 <= reply.judgments[0].p_yes <= 1


# ----------------------------------------------------------------------------------- strategies
f32 = st.floats(width=32)


def outside(lo: float, hi: float, lo_open: bool = False):
    """float32 values a check_finite(lo, hi) refuses: NaN, infinities, and finite ones out of range."""
    low = f32.filter(lambda x: x < lo or (lo_open and x == lo))
    high = f32.filter(lambda x: x > hi)
    return st.one_of(st.just(math.nan), st.just(math.inf), st.just(-math.inf), low, high)


# Neither a model folder nor a reference the servers can fetch (they have no store): refused.
bad_checkpoint = st.one_of(
    st.text(min_size=1, max_size=200), st.text("0123456789abcdef", min_size=64, max_size=64)
).filter(lambda t: not (ROOT / t / "config.json").is_file() if "\x00" not in t else True)
blank = st.text(alphabet=" \t\n\r\u00a0\u2003\u3000", max_size=20)  # strips to nothing
too_long = st.integers(MAX_PROMPT + 1, 4 * MAX_PROMPT).map(lambda k: "a red circle " * (k // 13) + "x" * (k % 13 + 1))


@st.composite
def bad_generate(draw):
    """(request fields, the field the refusal must name): one thing wrong at a time."""
    kind = draw(
        st.sampled_from(
            ["n", "n_images", "cfg_scale", "temperature", "no_prompts", "blank", "long", "many", "checkpoint"]
        )
    )
    prompts = draw(st.lists(st.sampled_from([s.text for s in world.split("train")]), min_size=1, max_size=4))
    i = draw(st.integers(0, len(prompts)))
    if kind == "n":
        return {"n": draw(st.integers(-(2**31), 0) | st.integers(MAX_N + 1, 2**31 - 1))}, "n"
    if kind == "n_images":  # each part allowed, the product not
        return {"n": MAX_N, "prompts": ["a red circle"] * (MAX_IMAGES // MAX_N + draw(st.integers(1, 50)))}, "n"
    if kind == "cfg_scale":
        return {"cfg_scale": draw(outside(0, 20, lo_open=True))}, "cfg_scale"
    if kind == "temperature":
        return {"temperature": draw(outside(0, 5))}, "temperature"
    if kind == "no_prompts":
        return {"prompts": []}, "prompts"
    if kind == "many":
        return {"prompts": ["a red circle"] * draw(st.integers(MAX_BATCH + 1, 2 * MAX_BATCH))}, "prompts"
    if kind == "checkpoint":
        return {"checkpoint": draw(bad_checkpoint)}, "checkpoint"
    bad = draw(blank if kind == "blank" else too_long)
    return {"prompts": prompts[:i] + [bad] + prompts[i:]}, f"prompts[{i}]"


def not_png():
    """Bytes that are not a PNG: anything, or a PNG signature followed by noise."""
    return st.one_of(st.binary(max_size=2000), st.binary(max_size=2000).map(lambda b: b"\x89PNG\r\n\x1a\n" + b))


@st.composite
def damaged_png(draw):
    """A real PNG with a few bytes changed, or cut short: it may still decode (PIL reads an image
    that lacks its last chunks or checksums; then it must be judged) or not (then refused)."""
    if draw(st.booleans()):
        return GOOD_PNG[: draw(st.integers(0, len(GOOD_PNG) - 1))]
    data = bytearray(GOOD_PNG)
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


def decodes(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as im:
            im.convert("RGB")
        return True
    except Exception:
        return False


tokens = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=80).filter(
    lambda t: t != TOKEN
)
authorization = st.one_of(tokens.map(lambda t: f"Bearer {t}"), tokens)  # a wrong token, or no Bearer scheme


# ----------------------------------------------------------------------------------- generation
@PROPERTY
@given(case=bad_generate())
def test_generate_refuses_bad_parameters_naming_the_field(gen, case):
    fields, field = case
    refused(lambda: generate(gen, **fields), field)
    still_serves_generation(gen)


@PROPERTY
@given(prompt=st.text(max_size=2 * MAX_PROMPT))
def test_generate_serves_any_prompt_text_or_names_it(gen, prompt):
    """Any text within the limits is a prompt the model samples from (the tokenizer maps unknown
    words to <unk>); blank or too long is refused; nothing is an internal error."""
    if not prompt.strip() or len(prompt) > MAX_PROMPT:
        refused(lambda: generate(gen, prompts=[prompt]), "prompts[0]")
    else:
        replies = generate(gen, prompts=[prompt], seed=len(prompt))
        assert len(replies) == 1 and len(replies[0].image_tokens) > 0
    still_serves_generation(gen)


@PROPERTY
@given(data=not_png(), before=st.integers(0, 2))
def test_encode_refuses_bytes_that_are_not_a_png(gen, data, before):
    request = gpb.EncodeRequest(png=[GOOD_PNG] * before + [data])
    details = refused(lambda: gen.Encode(request, timeout=60), f"png[{before}]")
    assert ("is empty" in details) if not data else ("not a readable PNG" in details)
    still_serves_generation(gen)


@PROPERTY
@given(header=authorization)
def test_generation_refuses_a_wrong_token(servers, gen, header):
    with grpc.insecure_channel(servers["generation"]) as ch:
        stub = generation_pb2_grpc.GenerationServiceStub(ch)
        metadata = (("authorization", header),)
        details = refused(
            lambda: list(
                stub.Generate(
                    gpb.GenerateRequest(prompts=["a red circle"], n=1, cfg_scale=1.5), metadata=metadata, timeout=60
                )
            ),
            None,
            grpc.StatusCode.UNAUTHENTICATED,
        )
        assert details == "the bearer token is not valid"
        details = refused(
            lambda: stub.GetModel(gpb.GenerationServiceGetModelRequest(), timeout=60),
            None,
            grpc.StatusCode.UNAUTHENTICATED,
        )  # no token at all
        assert "needs a token" in details
    still_serves_generation(gen)


# ----------------------------------------------------------------------------------- judge
@FEW
@given(data=not_png(), before=st.integers(0, 3))
def test_score_refuses_bytes_that_are_not_a_png(judge, data, before):
    pairs = [(GOOD_PNG, PROMPT)] * before + [(data, PROMPT)]
    details = refused(lambda: score(judge, pairs), f"pairs[{before}].png")
    assert ("is empty" in details) if not data else ("not a readable PNG" in details)
    still_serves_judge(judge)


@FEW
@given(data=damaged_png())
def test_score_judges_or_refuses_a_damaged_png_never_fails_inside(judge, data):
    if decodes(data):
        reply = score(judge, [(data, PROMPT)])
        assert len(reply.judgments) == 1 and 0 <= reply.judgments[0].p_yes <= 1
    else:
        refused(lambda: score(judge, [(data, PROMPT)]), "pairs[0].png")
    still_serves_judge(judge)


@st.composite
def bad_score(draw):
    kind = draw(st.sampled_from(["threshold", "no_pairs", "many", "blank", "long", "grammar", "checkpoint"]))
    n = draw(st.integers(1, 3))
    i = draw(st.integers(0, n - 1))
    pairs = [(GOOD_PNG, PROMPT)] * n
    if kind == "threshold":
        return pairs, {"threshold": draw(outside(0, 1))}, "threshold"
    if kind == "no_pairs":
        return [], {}, "pairs"
    if kind == "many":
        return [(GOOD_PNG, PROMPT)] * draw(st.integers(MAX_BATCH + 1, MAX_BATCH + 40)), {}, "pairs"
    if kind == "checkpoint":
        return pairs, {"checkpoint": draw(bad_checkpoint)}, "checkpoint"
    if kind == "grammar":  # the likelihood judge needs the shapes-world grammar's competing captions
        bad = draw(st.text(min_size=1, max_size=MAX_PROMPT).filter(lambda t: t.strip() and not parses(t)))
    else:
        bad = draw(blank if kind == "blank" else too_long)
    pairs[i] = (GOOD_PNG, bad)
    return pairs, {}, f"pairs[{i}].prompt"


def parses(text: str) -> bool:
    try:
        world.parse(text)
        return True
    except ValueError:
        return False


@FEW
@given(case=bad_score())
def test_score_refuses_bad_requests_naming_the_field(judge, case):
    pairs, fields, field = case
    refused(lambda: score(judge, pairs, **fields), field)
    still_serves_judge(judge)


@FEW
@given(kind=st.sampled_from(["n", "cfg_scale", "temperature"]), data=st.data())
def test_non_unification_refuses_bad_parameters(judge, kind, data):
    value = {
        "n": st.integers(-(2**31), 0) | st.integers(MAX_N + 1, 2**31 - 1),
        "cfg_scale": outside(0, 20, lo_open=True),
        "temperature": outside(0, 5),
    }[kind]
    request = {"prompts": [PROMPT], "n": 1, "cfg_scale": 1.5, "temperature": 0.7} | {kind: data.draw(value)}
    refused(lambda: list(judge.NonUnification(jpb.NonUnificationRequest(**request), timeout=60)), kind)
    still_serves_judge(judge)


@FEW
@given(header=authorization)
def test_judge_refuses_a_wrong_token(servers, judge, header):
    with grpc.insecure_channel(servers["judge"]) as ch:
        stub = judge_pb2_grpc.JudgeServiceStub(ch)
        details = refused(
            lambda: stub.Score(
                jpb.ScoreRequest(pairs=[jpb.ImagePrompt(png=GOOD_PNG, prompt=PROMPT)]),
                metadata=(("authorization", header),),
                timeout=60,
            ),
            None,
            grpc.StatusCode.UNAUTHENTICATED,
        )
        assert details == "the bearer token is not valid"
    still_serves_judge(judge)


def test_score_refuses_a_decompression_bomb(judge):
    """A few kB of PNG that claims 25 megapixels is refused before its pixels are decoded."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((5000, 5000), dtype=np.uint8)).save(buf, format="PNG")
    assert len(buf.getvalue()) < 100_000
    details = refused(lambda: score(judge, [(GOOD_PNG, PROMPT), (buf.getvalue(), PROMPT)]), "pairs[1].png")
    assert "5000x5000 pixels" in details
    still_serves_judge(judge)
