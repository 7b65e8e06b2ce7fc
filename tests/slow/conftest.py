"""The learning checks run on one torch thread, whatever ran before them.

Their thresholds were measured at one thread; a float sum reduced over two threads differs in its last bits,
and over 30 steps of sampling that is a different run. Pinning the count keeps a check from depending on test
order or on another test's leftover setting.
"""

import pytest


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):
    yield
