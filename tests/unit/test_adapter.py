"""The model adapter on a tiny random Janus: sampling, log-prob layout, judging, save/load."""

import numpy as np
import pytest
import torch
from transformers import GenerationConfig

from unigap.model.adapter import UnifiedModel, gen_text, und_text
from unigap.model.judge import Judge, question

PROMPTS = ["a red circle", "a blue square left of a green triangle", "two yellow circles"]


def test_sample_shapes_and_seeding(tiny_random):
    s = tiny_random.sample(PROMPTS, n=3, cfg=1.5, temperature=1.0, seed=5)
    assert s.tokens.shape == (9, tiny_random.num_image_tokens)
    assert s.images.shape == (9, 32, 32, 3) and s.images.dtype == np.uint8
    assert s.prompt_index == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    again = tiny_random.sample(PROMPTS, n=3, cfg=1.5, temperature=1.0, seed=5)
    assert torch.equal(s.tokens, again.tokens)
    other = tiny_random.sample(PROMPTS, n=3, cfg=1.5, temperature=1.0, seed=6)
    assert not torch.equal(s.tokens, other.tokens)
    assert not torch.equal(s.tokens[0], s.tokens[1])  # candidates of one prompt differ


def test_step_noise_is_a_function_of_key_step_and_code_alone():
    """Counter-based noise: the tensor hash equals its pure-Python reference bit for bit, and a
    row's noise at a step does not depend on the other rows, their order or the steps before."""
    from unigap.model.adapter import _mix32, mix32, row_seed, step_gumbel

    xs = torch.randint(0, 2**32, (2000,), generator=torch.Generator().manual_seed(0))
    assert _mix32(xs).tolist() == [mix32(int(x)) for x in xs]
    keys = torch.tensor([row_seed(s, p, k) for s in (0, 1) for p in PROMPTS for k in range(3)])
    g = step_gumbel(keys, 7, 50)
    assert g.shape == (len(keys), 50) and g.dtype == torch.float32
    perm = torch.randperm(len(keys), generator=torch.Generator().manual_seed(1))
    assert torch.equal(step_gumbel(keys[perm], 7, 50), g[perm])
    assert torch.equal(step_gumbel(keys[4:5], 7, 50), g[4:5])
    assert torch.equal(step_gumbel(keys, 7, 20), g[:, :20])  # code v's noise does not depend on the codebook size
    assert not torch.equal(step_gumbel(keys, 8, 50), g)  # each step has its own noise
    assert len(set(g[:, 0].tolist())) == len(keys)  # and each candidate


def test_step_noise_is_gumbel_and_gumbel_max_samples_the_softmax():
    from unigap.model.adapter import row_seed, step_gumbel

    keys = torch.tensor([row_seed(3, "x", k) for k in range(4000)])
    g = torch.cat([step_gumbel(keys, t, 64) for t in range(4)])  # 1.0 M draws
    assert torch.isfinite(g).all()
    assert g.double().mean().item() == pytest.approx(0.5772157, abs=0.006)  # Euler's constant, ~5 sd of the mean
    assert g.double().var().item() == pytest.approx(torch.pi**2 / 6, rel=0.02)
    # Gumbel-max over 8 logits: each code's frequency is its softmax probability (16,000 draws)
    logits = torch.linspace(-2.0, 1.5, 8)
    picks = (logits + g[:16000, :8]).argmax(-1)
    freq = torch.bincount(picks, minlength=8).double() / len(picks)
    p = torch.softmax(logits.double(), -1)
    sd = (p * (1 - p) / len(picks)).sqrt()
    assert ((freq - p).abs() < 5 * sd).all(), (freq, p)
    # neighbouring codes and candidates are uncorrelated
    u = torch.exp(-torch.exp(-g.double()))  # back to uniform
    assert abs(torch.corrcoef(torch.stack([u[:, :-1].flatten(), u[:, 1:].flatten()]))[0, 1].item()) < 0.01
    assert abs(torch.corrcoef(torch.stack([u[:-1].flatten(), u[1:].flatten()]))[0, 1].item()) < 0.01


def test_candidates_do_not_depend_on_the_batch(tiny_random):
    """A candidate's tokens are the same sampled alone, beside other prompts, in chunks of any
    size, or among more candidates of its prompt (candidate k's noise is keyed by k)."""
    both = tiny_random.sample(PROMPTS, n=2, cfg=2.0, temperature=1.0, seed=1, decode=False)
    alone = tiny_random.sample(PROMPTS[1:2], n=2, cfg=2.0, temperature=1.0, seed=1, decode=False)
    assert torch.equal(both.tokens[2:4], alone.tokens)
    chunks = [
        tiny_random.sample(PROMPTS[i : i + 2], n=2, cfg=2.0, temperature=1.0, seed=1, decode=False) for i in (0, 2)
    ]
    assert torch.equal(torch.cat([c.tokens for c in chunks]), both.tokens)
    more = tiny_random.sample(PROMPTS, n=3, cfg=2.0, temperature=1.0, seed=1, decode=False)
    assert torch.equal(more.tokens.view(3, 3, -1)[:, :2], both.tokens.view(3, 2, -1))
    per_prompt_seed = tiny_random.sample(PROMPTS, n=2, cfg=2.0, temperature=1.0, seed=[1, 9, 1], decode=False)
    assert torch.equal(per_prompt_seed.tokens[[0, 1, 4, 5]], both.tokens[[0, 1, 4, 5]])
    assert not torch.equal(per_prompt_seed.tokens[2:4], both.tokens[2:4])


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_teacher_forced_argmax_equals_greedy_sampling(tiny_random, cfg):
    s = tiny_random.sample(PROMPTS, n=1, cfg=cfg, temperature=0.0, decode=False)
    logits = tiny_random.image_logits(PROMPTS, s.tokens, cfg=cfg)
    assert torch.equal(logits.argmax(-1), s.tokens)


def test_greedy_sampling_matches_transformers_generate(tiny_random):
    um = tiny_random
    ids, mask = um._tokenize([gen_text(PROMPTS[1]) + um.tokenizer.boi_token])
    config = GenerationConfig(
        max_new_tokens=um.num_image_tokens,
        do_sample=False,
        guidance_scale=2.0,
        pad_token_id=um.tokenizer.pad_token_id,
        bos_token_id=um.tokenizer.bos_token_id,
        generation_kwargs={"boi_token_id": um.boi_id},
    )
    ref = um.model.generate(input_ids=ids, attention_mask=mask, generation_mode="image", generation_config=config)
    ours = um.sample(PROMPTS[1:2], n=1, cfg=2.0, temperature=0.0, decode=False)
    assert torch.equal(ref, ours.tokens)


def test_image_logprobs_are_log_softmax_of_logits(tiny_random):
    s = tiny_random.sample(PROMPTS, n=1, cfg=1.0, temperature=1.0, decode=False)
    lp = tiny_random.image_logprobs(PROMPTS, s.tokens)
    logits = tiny_random.image_logits(PROMPTS, s.tokens)
    manual = torch.log_softmax(logits, -1).gather(-1, s.tokens[..., None]).squeeze(-1)
    assert torch.allclose(lp, manual, atol=1e-5)
    assert lp.shape == s.tokens.shape and (lp <= 0).all()
    # padding never shifts a row: a prompt's log-probs do not depend on its batch mates
    alone = tiny_random.image_logprobs(PROMPTS[:1], s.tokens[:1])
    assert torch.allclose(lp[:1], alone, atol=1e-4)


def test_prompt_dropout_gives_the_unconditional_branch(tiny_random):
    um = tiny_random
    ids, _ = um.gen_prefix(PROMPTS[:1], guided=True)
    dropped, _ = um.gen_prefix(PROMPTS[:1], guided=False, drop=torch.tensor([True]))
    assert torch.equal(ids[1:], dropped)
    assert set(ids[1].tolist()) == {um.tokenizer.pad_token_id, um.tokenizer.bos_token_id, um.boi_id}


def test_answer_logprobs_and_batch_invariance(tiny_random):
    images = tiny_random.sample(PROMPTS, n=1, temperature=1.0).images
    qs = [question(p) for p in PROMPTS]
    lp = tiny_random.answer_logprobs(images, qs, ["The score is 1", "The score is 0", "yes"])
    assert lp.shape == (3,) and (lp < 0).all()
    one = tiny_random.answer_logprobs(images[1:2], qs[1:2], ["The score is 0"])
    assert torch.allclose(lp[1:2], one, atol=1e-4)
    # the answer log-prob is the sum of next-token log-probs
    logits = tiny_random.next_token_logits(images[:1], qs[:1], "The score is")
    tok = tiny_random.tokenizer
    one_id, eos = tok.convert_tokens_to_ids("1"), tok.eos_token_id
    with_eos = tiny_random.answer_logprobs(images[:1], qs[:1], ["The score is 1"])
    without = tiny_random.answer_logprobs(images[:1], qs[:1], ["The score is"], eos=False)
    step = torch.log_softmax(logits, -1)[0, one_id]
    tok_lp, amask = tiny_random.answer_token_logprobs(images[:1], qs[:1], ["The score is 1"])
    assert torch.allclose(with_eos, without + step + tok_lp[0, amask[0]][-1], atol=1e-4)
    assert tok_lp[0, amask[0]].shape[0] == 5  # The score is 1 <eos>
    assert eos is not None


def test_judge_modes(tiny_random):
    images = tiny_random.sample(PROMPTS, n=1, temperature=1.0).images
    for mode in ("probability", "decision"):
        j = Judge(tiny_random, mode).score(images, PROMPTS)
        assert j.p_yes.shape == (3,) and ((0 <= j.p_yes) & (j.p_yes <= 1)).all()
        assert (j.decision == (j.p_yes >= 0.5)).all()
    assert len(Judge(tiny_random, "decision").score(images, PROMPTS).answers) == 3
    caps = {p: [p + " x", "a green square"] for p in PROMPTS}
    j = Judge(tiny_random, "likelihood", competitors=lambda p: caps[p]).score(images, PROMPTS)
    assert ((0 < j.p_yes) & (j.p_yes < 1)).all()
    with pytest.raises(ValueError, match="mode"):
        Judge(tiny_random, "vibes")
    with pytest.raises(ValueError, match="competing"):
        Judge(tiny_random, "likelihood")


def test_encode_decode_and_save_load_round_trip(tiny_random, tmp_path):
    images = tiny_random.sample(PROMPTS, n=1, temperature=1.0).images
    tokens = tiny_random.encode(images)
    assert tokens.shape == (3, tiny_random.num_image_tokens)
    tiny_random.save(tmp_path / "m")
    loaded = UnifiedModel.load(tmp_path / "m")
    a = tiny_random.sample(PROMPTS, n=2, temperature=1.0, seed=3)
    b = loaded.sample(PROMPTS, n=2, temperature=1.0, seed=3)
    assert torch.equal(a.tokens, b.tokens) and np.array_equal(a.images, b.images)
    assert torch.equal(loaded.encode(images), tokens)
    with pytest.raises(FileNotFoundError, match="no model"):
        UnifiedModel.load(tmp_path / "missing")


def _vq_round_trip(um, chunk: int | None, tokens):
    um.cpu_vq_images = chunk
    try:
        images = um.decode(tokens)
        return images, um.encode(images)
    finally:
        del um.cpu_vq_images  # back to the class's default


def test_chunked_vq_passes_equal_one_pass(tiny_random):
    tokens = torch.randint(
        0,
        tiny_random.model.config.vq_config.num_embeddings,
        (37, tiny_random.num_image_tokens),
        generator=torch.Generator().manual_seed(0),
    )
    images, codes = _vq_round_trip(tiny_random, 8, tokens)  # 5 chunks, the last of 5 images
    one_images, one_codes = _vq_round_trip(tiny_random, None, tokens)
    assert np.array_equal(images, one_images) and torch.equal(codes, one_codes)  # may flip at near-ties; none on these


def test_remembered_token_ids_pad_as_the_tokenizer_does(tiny_random):
    texts = [gen_text(p) for p in PROMPTS] + [und_text(tiny_random.image_block, "what is shown?"), "", PROMPTS[0]]
    for batch in (texts, texts[::-1], texts[2:4], [""]):
        for _ in range(2):  # tokenised, then remembered
            enc = tiny_random.tokenizer(batch, padding=True, return_tensors="pt", padding_side="left")
            ids, mask = tiny_random._tokenize(batch)
            assert torch.equal(ids, enc.input_ids) and torch.equal(mask, enc.attention_mask)
            assert (
                tiny_random.token_ids(batch, special=False)
                == tiny_random.tokenizer(batch, add_special_tokens=False).input_ids
            )


def test_answer_logprobs_equal_a_full_forward_and_share_prefixes(tiny_random):
    """The cached-prefix scoring equals scoring each whole sequence in one plain forward pass."""
    um = tiny_random
    images = um.sample(PROMPTS[:2], n=1, temperature=1.0).images
    q = "Describe the image."
    caps = ["a red circle", "two yellow circles", "a red circle left of a blue square"]
    shared = um.answer_logprobs(images, [q, q], caps + caps[:1], counts=[3, 1])
    tok = um.tokenizer
    from unigap.model.adapter import und_text

    for row, (img, cap) in enumerate([(0, caps[0]), (0, caps[1]), (0, caps[2]), (1, caps[0])]):
        prompt = tok([und_text(um.image_block, q)]).input_ids[0]
        answer = tok(cap, add_special_tokens=False).input_ids + [tok.eos_token_id]
        ids = torch.tensor([prompt + answer])
        logits = um.model(input_ids=ids, pixel_values=um.pixel_values(images[img : img + 1])).logits[0]
        logp = torch.log_softmax(logits[:-1], -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
        assert shared[row].item() == pytest.approx(logp[-len(answer) :].sum().item(), abs=1e-3)
    with pytest.raises(ValueError, match="counts"):
        um.answer_logprobs(images, [q, q], caps, counts=[1, 1])


def test_dialogue_turns_score_as_whole_forwards_each(tiny_random):
    """Several (question, answer) turns packed behind one image score each answer as a plain
    forward of und_text(image, question) + answer would; the question's tokens are not scored."""
    um = tiny_random
    images = um.sample(PROMPTS[:2], n=1, temperature=1.0).images
    from unigap.model.adapter import und_text
    from unigap.model.judge import CAPTION_QUESTION, answer, question

    turns = [
        (CAPTION_QUESTION, "a red circle"),
        (question("a red circle"), answer(True)),
        (question("two blue squares"), answer(False)),
    ]
    turns += [(question("a green triangle"), answer(True))]
    eos = [True, False, True, False]
    logp, mask = um.dialogue_token_logprobs(images, turns, [3, 1], eos)
    tok = um.tokenizer
    for row, ((q, a), img, e) in enumerate(zip(turns, (0, 0, 0, 1), eos)):
        said = tok(a, add_special_tokens=False).input_ids + [tok.eos_token_id] * e
        ids = torch.tensor([tok([und_text(um.image_block, q)]).input_ids[0] + said])
        logits = um.model(input_ids=ids, pixel_values=um.pixel_values(images[img : img + 1])).logits[0]
        want = torch.log_softmax(logits[:-1], -1).gather(-1, ids[0, 1:, None]).squeeze(-1)[-len(said) :]
        assert int(mask[row].sum()) == len(said)
        assert torch.allclose(logp[row, : len(said)], want, atol=1e-4)
    with pytest.raises(ValueError, match="counts"):
        um.dialogue_token_logprobs(images, turns, [2, 1])
