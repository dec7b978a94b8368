import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_path():
    """The shipped warm-started tiny model."""
    from rlsd.models import DEFAULT_MODEL_PATH

    assert (DEFAULT_MODEL_PATH / "model.safetensors").exists(), "run `rlsd sft` to rebuild it"
    return str(DEFAULT_MODEL_PATH)


@pytest.fixture(scope="session")
def random_path(tmp_path_factory):
    """A freshly initialised tiny model (same architecture, no training)."""
    from rlsd.models import build_model, build_tokenizer

    path = tmp_path_factory.mktemp("random-tiny")
    tokenizer = build_tokenizer()
    build_model(tokenizer, seed=0).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
