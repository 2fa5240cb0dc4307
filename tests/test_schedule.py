"""The source schedule (dept_core.rounds.source_schedule) and the per-round inner rate."""

from __future__ import annotations

import pytest

from dept_core.config import TrainConfig
from dept_core.rounds import inner_schedule, participation, source_schedule

NAMES = ["en", "de", "fr", "ru", "ja", "zh"]


@pytest.mark.parametrize("rounds,k", [(8, 3), (4, 6), (5, 6), (12, 4), (6, 1), (3, 2)])
def test_balanced_schedule_gives_every_source_the_same_number_of_rounds(rounds, k):
    for seed in range(5):
        sched = source_schedule(NAMES, rounds, k, "balanced", seed)
        assert len(sched) == rounds
        assert all(len(s) == k == len(set(s)) for s in sched)            # k distinct sources
        assert all(s == [n for n in NAMES if n in s] for s in sched)    # config order
        assert set(participation(sched, NAMES).values()) == {rounds * k // len(NAMES)}


def test_balanced_schedule_is_seeded_and_full_participation_is_every_round():
    a, b = (source_schedule(NAMES, 8, 3, "balanced", 0) for _ in range(2))
    assert a == b and a != source_schedule(NAMES, 8, 3, "balanced", 1)
    assert source_schedule(NAMES, 4, 6, "balanced", 0) == [NAMES] * 4


def test_random_schedule_is_the_papers_uniform_sampling_and_can_be_uneven():
    counts = [participation(source_schedule(NAMES, 8, 3, "random", s), NAMES)
              for s in range(20)]
    assert any(len(set(c.values())) > 1 for c in counts)   # binomial participation
    assert all(sum(c.values()) == 24 for c in counts)


def test_reset_rounds_ramp_the_rate_over_their_first_steps():
    t = TrainConfig(rounds=4, local_steps=10, lr=1.0, warmup_steps=0, min_lr_ratio=1.0,
                    inner_state="reset", round_warmup_steps=4)
    lr = inner_schedule(t, first=20)                 # round 3 starts at global step 20
    assert [lr(s) for s in range(20, 26)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    keep = TrainConfig(**{**t.model_dump(), "inner_state": "keep"})
    assert [inner_schedule(keep, 20)(s) for s in range(20, 23)] == [1.0, 1.0, 1.0]


def test_no_source_falls_more_than_a_round_behind_at_any_point():
    """The greedy on rounds still owed keeps participation even all along the run, not only
    at the end (so a run stopped early, or the curves, are balanced too)."""
    for seed in range(5):
        sched = source_schedule(NAMES, 12, 3, "balanced", seed)
        for prefix in range(1, 13):
            counts = participation(sched[:prefix], NAMES).values()
            assert max(counts) - min(counts) <= 1
