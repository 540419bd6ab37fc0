"""Golden tests: today's outputs of every method, the training loop, the shipped models and the
benchmark table, recorded by ``tools/record_golden.py`` into ``tests/golden/``.

A refactor must reproduce them to rtol 1e-5 / atol 1e-6 (CPU, float32, one thread). The cases
and every call into dap live in ``tests/golden_cases.py``; after moving code, rewire the adapters
at its top, never the recorded values. Re-record (``python tools/record_golden.py``) only for
an intended change of behaviour, and say so in the commit.
"""

from __future__ import annotations

import pytest
import torch

import golden_cases as G

FAST = [n for n in G.case_names() if n not in G.SLOW_CASES]
SLOW = [pytest.param(n, marks=pytest.mark.slow) for n in G.case_names() if n in G.SLOW_CASES]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_case_is_recorded():
    """A golden file per case and no stale ones (a new method or zoo model must be recorded)."""
    recorded = {p.stem for p in G.GOLDEN_DIR.glob("*.pt")}
    assert recorded == set(G.case_names()), (
        f"not recorded: {sorted(set(G.case_names()) - recorded)}; "
        f"no longer a case: {sorted(recorded - set(G.case_names()))}")


@pytest.mark.parametrize("name", G.method_names())
def test_buffers_are_not_random(name):
    """The by-name weights cover every random value: no buffer depends on the global RNG."""
    G.check_buffers_deterministic(name)


@pytest.mark.parametrize("name", FAST + SLOW)
def test_golden(name):
    expected = G.load_golden(name)
    actual = G.compute_case(name)
    G.assert_matches(actual, expected)
