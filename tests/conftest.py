"""Shared fixtures: SmolLM2's tokenizer, tiny Llama models built from a config, the embedded model.

Nothing here changes global torch settings for longer than a test: tiny models are seeded inside
``torch.random.fork_rng`` and ``one_torch_thread`` restores the thread count.
"""

import os

import pytest
import torch

from align import models
from align.rl.common import torch_threads
from tests import support as testing

if os.environ.get("PYTEST_XDIST_WORKER"):
    # CI runs the suite in two pytest-xdist workers on two cores: one torch thread each, or they contend
    # (OpenMP spin-waits made two 2-thread processes several times slower than two 1-thread ones).
    torch.set_num_threads(1)


# The longest files first: with two workers and whole files per worker (--dist loadfile), a long file that
# starts late ends the run late (the GRPO learning check, about 22 minutes, used to start after every
# integration file and set the suite's wall time). Known costs on CI's 2 cores, longest first.
_LONG_FILES = (
    "slow/test_grpo_learning.py",
    "slow/test_ppo_learning.py",
    "slow/test_rl_learning.py",
    "slow/test_dt_learning.py",
    "slow/test_pref_learning.py",
    "slow/test_monitor_learning.py",
    "slow/test_judge_injection.py",
)


def pytest_collection_modifyitems(config, items):
    def rank(item):
        path = item.nodeid.split("::")[0]
        return next((i for i, name in enumerate(_LONG_FILES) if path.endswith(name)), len(_LONG_FILES))

    items.sort(key=rank)  # stable: the order within each file and among the other files is kept


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """SmolLM2's tokenizer (left padding, pad = eos = ``<|im_end|>``). Shared by all tests: do not mutate."""
    return testing.tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """A saved tiny causal LM + tokenizer directory, for recipes and loaders that take a path."""
    return testing.save_tiny_model(tmp_path_factory.mktemp("tiny_model") / "model", tokenizer=tiny_tokenizer)


@pytest.fixture
def tiny_model(tiny_tokenizer):
    """A fresh tiny ``LlamaForCausalLM`` (2 layers, hidden 64, seed 0) per test."""
    return testing.tiny_causal_lm(tiny_tokenizer)


@pytest.fixture
def tiny_classifier(tiny_tokenizer):
    """A fresh tiny ``LlamaForSequenceClassification`` (one label, pad id set) per test."""
    return testing.tiny_sequence_classifier(tiny_tokenizer)


@pytest.fixture(scope="session")
def embedded_model_dir():
    """The embedded SmolLM2-135M-Instruct as safetensors (converted on first use, ~15-30 s, then cached)."""
    try:
        return models.embedded_model_dir()
    except models.EmbeddedModelNotInstalledError as error:
        pytest.skip(f"embedded model unavailable: {error}")


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps process-wide singletons: a test that builds trainers in-process starts and ends clean.
    Use per module with ``pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")``."""
    testing.reset_accelerate_state()
    yield
    testing.reset_accelerate_state()


@pytest.fixture
def one_torch_thread():
    """One torch intra-op thread for the test, then the previous count. For tiny tensors (threads only add
    synchronisation: a 64x4x64 matvec took 4 us on 1 thread, 1-14 ms on 2 busy ones) and for the learning
    checks, whose thresholds were measured on one thread."""
    with torch_threads(1):
        yield
