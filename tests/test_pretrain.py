"""The pretraining command end to end at toy size: it trains, saves, and resumes to the same model."""

import shutil

import torch
from safetensors.torch import load_file

from unigap.model.adapter import UnifiedModel
from unigap.model.build import TinySize
from unigap.pretrain import PretrainConfig, pretrain

SIZE = TinySize(hidden=64, layers=1, heads=2, vision_hidden=64, vision_layers=1, codebook=64)
CFG = PretrainConfig(batch=4, gen_batch=4, yes_no=2, vq_steps=2, und_steps=2, joint_steps=2, final_steps=2)


def test_pretrain_saves_a_loadable_model_and_resumes_identically(tmp_path):
    pretrain(tmp_path / "a", CFG, SIZE)
    assert (tmp_path / "a" / "stage-vq" / "weights.safetensors").is_file()
    assert (tmp_path / "a" / "stage-joint" / "weights.safetensors").is_file()
    um = UnifiedModel.load(tmp_path / "a")
    assert um.sample(["a red circle"], n=1, seed=0).images.shape == (1, 32, 32, 3)

    # A run interrupted after its joint stage: only the final stage is left to do.
    shutil.copytree(tmp_path / "a" / "stage-vq", tmp_path / "b" / "stage-vq")
    shutil.copytree(tmp_path / "a" / "stage-joint", tmp_path / "b" / "stage-joint")
    pretrain(tmp_path / "b", CFG, SIZE)
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
