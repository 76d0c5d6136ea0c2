"""The empirical-NTK analysis against brute force on a tiny random model."""

import copy

import numpy as np
import pytest
import torch

from unigap.dynamics import BRANCHES, Sample, analyse, apply_step, cosine, logps, per_sample_grads, shared_parameters
from unigap.model.adapter import UnifiedModel

PROMPTS = ["a red circle", "two blue squares", "a green circle left of a red square"]


@pytest.fixture(scope="module")
def samples(tiny_random):
    out = tiny_random.sample(PROMPTS, n=1, temperature=1.0, seed=0)
    return [Sample(p, t.numpy(), im) for p, t, im in zip(PROMPTS, out.tokens, out.images)]


@pytest.fixture(scope="module")
def tiny_double(tiny_random):
    """Float64, so that finite differences are exact enough to check gradients against."""
    return UnifiedModel(copy.deepcopy(tiny_random.model).double(), tiny_random.processor)


@pytest.mark.parametrize("branch", ["gen", "und"])
def test_per_sample_gradient_matches_finite_differences(tiny_double, samples, branch):
    g = per_sample_grads(tiny_double, samples[:1], branch)[0]
    torch.manual_seed(0)
    v = torch.randn_like(g)
    v /= v.norm()
    eps = 1e-2
    with torch.no_grad():
        f_plus = logps(apply_step(tiny_double, v, eps), samples[:1], branch)
        f_minus = logps(apply_step(tiny_double, v, -eps), samples[:1], branch)
    fd = (f_plus - f_minus).item() / (2 * eps)
    assert fd == pytest.approx(float(g @ v), rel=1e-4, abs=1e-6)


def test_per_sample_gradients_sum_to_the_batch_gradient(tiny_random, samples):
    g = per_sample_grads(tiny_random, samples, "gen")
    params = shared_parameters(tiny_random)
    batch = tiny_random.image_logprobs(PROMPTS, torch.as_tensor(np.stack([s.tokens for s in samples]))).sum()
    full = torch.cat([x.reshape(-1) for x in torch.autograd.grad(batch, params)])
    assert torch.allclose(g.sum(0), full, rtol=1e-3, atol=1e-4)


def test_kernel_predicts_a_small_step(tiny_random, samples):
    result = analyse(tiny_random, samples[:2], samples[1:], step=1e-3)
    for b in BRANCHES:
        p, o = np.array(result[f"{b}_predicted"]), np.array(result[f"{b}_observed"])
        assert result[f"{b}_correlation"] > 0.99
        assert np.abs(p - o).max() < 0.05 * np.abs(p).max() + 1e-6
    cos = np.array(result["cosine_matrix"])
    assert cos.shape == (2, 2) and np.all(np.abs(cos) <= 1 + 1e-6)


def test_cosine():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert torch.allclose(cosine(a, a), torch.tensor([[1.0, 2**-0.5], [2**-0.5, 1.0]]))
