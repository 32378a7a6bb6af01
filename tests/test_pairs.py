import math
import random

import pytest

from lpo_train.pairs import PAIR_MODES, Pair, build_pairs


def test_best_vs_worst_with_deterministic_ties():
    pairs, stats = build_pairs([[0.1, 0.9, 0.3, 0.9, 0.1], [1.0, 0.0]])
    assert pairs == [Pair(0, 1, 0, 0.9, 0.1), Pair(1, 0, 1, 1.0, 0.0)]
    assert stats.pairs == 2 and stats.tied == 0


def test_all_tied_groups_give_no_pair_and_are_counted():
    pairs, stats = build_pairs([[1.0, 1.0, 1.0], [0.0, 1.0], [0.5, 0.5]])
    assert [p.prompt_index for p in pairs] == [1]
    assert stats.tied == 2 and stats.frac_tied == pytest.approx(2 / 3)


def test_none_and_nan_rewards_are_dropped_and_counted():
    pairs, stats = build_pairs([[None, 0.2, float("nan"), 0.7], [None, None, 0.3], [math.nan, math.nan]])
    assert pairs == [Pair(0, 3, 1, 0.7, 0.2)]
    assert stats.invalid == 2 and stats.dropped_rewards == 6


def test_all_pairs_mode():
    pairs, _ = build_pairs([[0.3, 0.1, 0.3, 0.0]], mode="all")
    assert {(p.chosen, p.rejected) for p in pairs} == {(0, 1), (0, 3), (2, 1), (2, 3), (1, 3)}


def test_constrained_mode_uses_the_secondary_criterion():
    rewards = [[0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]]
    constraint = [[0.1, 0.5, 0.9, 0.2, 0.0, 0.3, 0.8, 0.6]]
    pairs, _ = build_pairs(rewards, mode="constrained", secondary=constraint, top_k=4)
    # top 4 by reward: 0..3 -> best constraint is 2; bottom 4: 4..7 -> worst constraint is 4
    assert pairs == [Pair(0, 2, 4, 0.7, 0.5)]


def test_bad_mode_and_missing_secondary():
    with pytest.raises(ValueError, match="best_worst"):
        build_pairs([[1, 0]], mode="random")
    with pytest.raises(ValueError, match="secondary"):
        build_pairs([[1, 0]], mode="constrained")


def test_seeded_tie_break_does_not_favour_low_sample_indices():
    # two tied best (indices 0 and 1) and two tied worst (2 and 3): with tie_seed either may be chosen
    groups = [[1.0, 1.0, 0.0, 0.0]] * 400
    pairs, _ = build_pairs(groups, tie_seeds=list(range(400)))
    chosen0 = sum(p.chosen == 0 for p in pairs) / len(pairs)
    rejected2 = sum(p.rejected == 2 for p in pairs) / len(pairs)
    assert 0.4 < chosen0 < 0.6 and 0.4 < rejected2 < 0.6
    assert build_pairs(groups, tie_seeds=list(range(400)))[0] == pairs  # deterministic given the seeds
    alone, in_batch = build_pairs(groups[:1], tie_seeds=[5])[0][0], build_pairs(groups[:3], tie_seeds=[9, 5, 7])[0][1]
    assert (alone.chosen, alone.rejected) == (in_batch.chosen, in_batch.rejected)  # the group's seed, not its place
    assert all(p.chosen == 0 and p.rejected == 2 for p in build_pairs(groups)[0])  # default: lowest index


def test_bradley_terry_pairs_by_hand():
    """First two valid rewards of each group; the first chosen when its draw falls under sigmoid(scale * gap);
    one draw per group with two valid rewards, in group order; ties are a pair too (a coin flip)."""
    from lpo_train.pairs import bradley_terry_pairs

    groups = [[2.0, 0.0, 9.0], [0.5], [1.0, 1.0], [None, 0.0, 3.0]]
    pairs, stats = bradley_terry_pairs(groups, bt_scale=0.5, seed=7)
    draws = random.Random("pairs-7")
    u0, u2, u3 = draws.random(), draws.random(), draws.random()  # group 1 (one reward) draws nothing
    p0, p3 = 1 / (1 + math.exp(-0.5 * 2.0)), 1 / (1 + math.exp(-0.5 * -3.0))  # sigmoid(0.5 * (r_a - r_b))
    assert pairs == [Pair(0, 0, 1, 2.0, 0.0) if u0 < p0 else Pair(0, 1, 0, 0.0, 2.0),
                     Pair(2, 0, 1, 1.0, 1.0) if u2 < 0.5 else Pair(2, 1, 0, 1.0, 1.0),
                     Pair(3, 1, 2, 0.0, 3.0) if u3 < p3 else Pair(3, 2, 1, 3.0, 0.0)]
    assert stats.pairs == 3 and stats.invalid == 1 and stats.dropped_rewards == 1 and stats.groups == 4
    sharp, _ = bradley_terry_pairs([[1.0, 0.0], [0.0, 1.0]], bt_scale=100.0)
    assert [(p.chosen, p.rejected) for p in sharp] == [(0, 1), (1, 0)]  # a steep sigmoid: the higher reward


def test_value_pair_modes_are_declared_here():
    from lpo_train.pairs import BRADLEY_TERRY, VALUE_PAIR_MODES
    from lpo_train.trainers import value

    assert value.PAIR_MODES is VALUE_PAIR_MODES and VALUE_PAIR_MODES == (BRADLEY_TERRY, "best_worst")
    assert "best_worst" in PAIR_MODES and BRADLEY_TERRY not in PAIR_MODES  # LPO's pair_mode: deterministic modes
