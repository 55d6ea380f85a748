"""Unit tests for the two searches that only slow end-to-end tests reached: the calibrated GGUF
type allocation (a knapsack over each tensor's convex hull of bytes and predicted KLD) and the
quality gate's binary search for the smallest build that measures within the limit."""

import itertools
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgellm.errors import BadInput, NothingFits
from edgellm.exporters.gguf.mix import allocate
from edgellm.exporters.verify.quality_gate import Gate, smallest_passing

TYPES = ("q2", "q4", "q6", "q8")
SIZE = {"q2": 2, "q4": 4, "q6": 6, "q8": 8}


def brute_force(costs, sizes, budget):
    best = None
    names = list(costs)
    for pick in itertools.product(*(list(costs[n]) for n in names)):
        spent = sum(sizes[n][t] for n, t in zip(names, pick))
        total = sum(costs[n][t] for n, t in zip(names, pick))
        if spent <= budget and (best is None or total < best):
            best = total
    return best


def test_allocation_is_optimal_for_convex_costs_with_equal_steps():
    # costs falling ever more slowly with bytes (convex) and equal byte steps: greedy is optimal
    costs = {"a": {"q2": 10.0, "q4": 4.0, "q6": 2.0, "q8": 1.5},
             "b": {"q2": 3.0, "q4": 1.0, "q6": 0.5, "q8": 0.4},
             "c": {"q2": 30.0, "q4": 9.0, "q6": 3.0, "q8": 0.5}}
    sizes = {n: dict(SIZE) for n in costs}
    for budget in range(6, 25):
        got = allocate(costs, sizes, budget)
        assert sum(sizes[n][t] for n, t in got.items()) <= budget
        assert sum(costs[n][t] for n, t in got.items()) == pytest.approx(brute_force(costs, sizes, budget))


def test_allocation_spends_bytes_where_they_buy_most():
    costs = {"sensitive": {"q2": 100.0, "q8": 1.0}, "robust": {"q2": 1.1, "q8": 1.0}}
    sizes = {n: {"q2": 2, "q8": 8} for n in costs}
    assert allocate(costs, sizes, 10) == {"sensitive": "q8", "robust": "q2"}
    assert allocate(costs, sizes, 16) == {"sensitive": "q8", "robust": "q8"}
    assert allocate(costs, sizes, 4) == {"sensitive": "q2", "robust": "q2"}


def test_allocation_never_picks_a_dominated_type():
    # q6 is both bigger and worse than q4: off the hull, never chosen whatever the budget
    costs = {"a": {"q2": 5.0, "q4": 2.0, "q6": 3.0, "q8": 1.0}}
    sizes = {"a": dict(SIZE)}
    for budget in range(2, 9):
        assert allocate(costs, sizes, budget)["a"] != "q6"


def test_allocation_refuses_a_budget_below_the_smallest_types():
    with pytest.raises(ValueError, match="smallest types"):
        allocate({"a": {"q2": 1.0}}, {"a": {"q2": 2}}, 1)


@dataclass(frozen=True)
class FakeResult:
    bundle: Path
    artifact: Path
    file_bytes: int
    verification: dict


class Choice:
    def __init__(self, i, kld):
        self.i, self.kld, self.label = i, kld, f"build-{i}"


def fake_export(tried):
    def export(c, folder: Path):
        tried.append(c.i)
        folder.mkdir()
        (folder / "model.bin").write_bytes(b"x" * (c.i + 1))
        return FakeResult(folder, folder / "model.bin", c.i + 1,
                          {"held_out": {"mean_kld": c.kld, "ppl_ratio": 1 + c.kld}})
    return export


def test_gate_finds_the_smallest_passing_build_in_log_steps(tmp_path):
    klds = [0.5, 0.2, 0.08, 0.04, 0.02, 0.01, 0.005, 0.001]     # smallest first, loss falling with size
    for limit, want in ((0.05, 3), (0.3, 1), (0.001, 7), (1.0, 0)):
        tried = []
        out = tmp_path / f"out-{limit}"
        choices = [Choice(i, k) for i, k in enumerate(klds)]
        result, chosen, trials = smallest_passing(choices, fake_export(tried), out, False, Gate(max_kld=limit))
        assert chosen.i == want and result.bundle == out and (out / "model.bin").read_bytes() == b"x" * (want + 1)
        assert len(tried) <= 4 and len(set(tried)) == len(tried)          # log2(8) + 1 exports at most
        assert [t.passed for t in trials] == [klds[i] <= limit for i in tried]
        leftovers = [p.name for p in tmp_path.iterdir() if ".trial-" in p.name]
        assert leftovers == []                                              # trials removed


def test_gate_with_nothing_passing_leaves_nothing_and_lists_measurements(tmp_path):
    choices = [Choice(i, k) for i, k in enumerate([0.5, 0.3, 0.2])]
    with pytest.raises(NothingFits, match="build-2: KLD 0.20000"):
        smallest_passing(choices, fake_export([]), tmp_path / "out", False, Gate(max_kld=0.1))
    assert list(tmp_path.iterdir()) == []


def test_gate_perplexity_limit_and_existing_output(tmp_path):
    choices = [Choice(i, k) for i, k in enumerate([0.5, 0.03, 0.01])]
    _, chosen, _ = smallest_passing(choices, fake_export([]), tmp_path / "out", False, Gate(max_ppl_increase=0.02))
    assert chosen.i == 2
    with pytest.raises(BadInput, match="already exists"):
        smallest_passing(choices, fake_export([]), tmp_path / "out", False, Gate(max_kld=1))
