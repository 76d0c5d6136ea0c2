"""A team's own checkpoint: a tiny random Janus with Janus-Pro's layout (byte-level BPE tokenizer
built offline, 384 px, 576 image tokens, 16384 codes) loads and is scored on free text through the
CLI; a folder that is not a Janus checkpoint is refused in one line."""

import json
import subprocess
import sys

import pytest
import torch
from test_cli import assert_one_line_error, run

from unigap.model.adapter import UnifiedModel
from unigap.paths import DEFAULT_MODEL

PROMPTS = ["a photo of a cat on a sofa", "a green teapot beside three oranges"]  # the second: words it never saw


def test_the_folder_has_janus_pros_layout(pro_folder):
    um = UnifiedModel.load(pro_folder)
    assert (um.num_image_tokens, um.image_size) == (576, 384)
    assert um.model.config.vq_config.num_embeddings == 16384
    assert json.loads(um.tokenizer.backend_tokenizer.to_str())["model"]["type"] == "BPE"
    ids = um.tokenizer(PROMPTS[1]).input_ids
    assert ids[0] == um.tokenizer.bos_token_id and um.tokenizer.unk_token_id not in ids
    assert um.tokenizer.decode(ids, skip_special_tokens=True) == PROMPTS[1]  # bytes: any text round-trips
    s = um.sample(PROMPTS, n=2, cfg=2.0, temperature=1.0, seed=3)
    assert s.tokens.shape == (4, 576) and s.images.shape == (4, 384, 384, 3)
    alone = um.sample(PROMPTS[1:], n=2, cfg=2.0, temperature=1.0, seed=3, decode=False)
    assert torch.equal(alone.tokens, s.tokens[2:])


def test_score_runs_on_free_text_with_the_checkpoints_tokenizer(pro_folder, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "score.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "unigap",
            "score",
            "--model",
            str(pro_folder),
            "--split",
            str(prompts),
            "--mode",
            "probability",
            "--evaluator",
            "none",
            "--n",
            "1",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["overall"]["n_images"] == 2 and 0 <= report["overall"]["nu"] <= 1
    assert report["overall"]["gen_acc"] is None and report["settings"]["model"] == str(pro_folder)
    assert "overall" in proc.stdout


def test_a_folder_that_is_not_a_janus_checkpoint_is_refused(tmp_path):
    from transformers import LlamaConfig

    llama = LlamaConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8)
    llama.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not a Janus checkpoint"):
        UnifiedModel.load(tmp_path)
    assert_one_line_error(
        run("score", "--model", str(tmp_path), "--mode", "probability"), "--model", "not a Janus checkpoint", "llama"
    )
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{nope")
    assert_one_line_error(run("score", "--model", str(broken), "--mode", "probability"), "not valid JSON")
    bare = tmp_path / "bare"  # a Janus config without the processor and tokenizer files
    bare.mkdir()
    (bare / "config.json").write_text((DEFAULT_MODEL / "config.json").read_text())
    assert_one_line_error(run("score", "--model", str(bare), "--mode", "probability"), "processor and tokenizer")
