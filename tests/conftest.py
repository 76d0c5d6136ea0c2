import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # oversubscribed OpenMP spins badly on 2 cores

import pytest
import torch

from unigap.model.judge import question

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_random():
    """A randomly initialised, very small Janus with the project's tokenizer and processor."""
    from unigap.model.adapter import UnifiedModel
    from unigap.model.build import TinySize, build_tiny
    from unigap.pretrain import vocabulary

    size = TinySize(hidden=64, layers=1, heads=2, vision_hidden=64, vision_layers=1, codebook=64)
    model, processor = build_tiny(vocabulary(), size, seed=0)
    return UnifiedModel(model.eval(), processor)


@pytest.fixture(scope="session")
def shipped():
    from unigap.model.adapter import UnifiedModel
    from unigap.paths import DEFAULT_MODEL

    return UnifiedModel.load(DEFAULT_MODEL)


PRO_CORPUS = [
    "a photo of a cat on a sofa",
    "two dogs playing in the snow",
    "a red bicycle leaning on a wall",
    question("a bowl of fruit"),  # the judge's own prompt, so its words are in the vocabulary
    "The score is 1",
    "The score is 0",
] * 4


@pytest.fixture(scope="session")
def pro_folder(tmp_path_factory):
    """A team's own checkpoint as unigap sees it: a tiny random Janus with Janus-Pro's layout (byte-level
    BPE tokenizer trained on PRO_CORPUS, 384 px, 576 image tokens), saved as a folder."""
    from unigap.model.adapter import UnifiedModel
    from unigap.model.build import build_pro_layout

    model, processor = build_pro_layout(PRO_CORPUS)
    folder = tmp_path_factory.mktemp("pro-layout")
    UnifiedModel(model.eval(), processor).save(folder)
    return folder


def pytest_collection_modifyitems(items):
    """Each test carries its folder's marker (unit, services, pipelines, deploy): `pytest -m services`."""
    for item in items:
        folder = item.path.parent.name
        if folder in ("unit", "services", "pipelines", "deploy"):
            item.add_marker(getattr(pytest.mark, folder))
