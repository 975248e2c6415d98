"""The fused step reduction's float arithmetic is numpy's, to the bit, in rank order (a NaN's
sign and payload aside: which operand's NaN survives is the instruction's business; every
rank still holds the same bits, as one rank folds and the others copy)."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from llmcluster.comm import fused

SPECIALS = [0.0, -0.0, 1.0, -1.5, float("nan"), float("inf"), -float("inf"), 1e-308, 3.0e300]
NUMPY = {"sum": np.add, "max": np.maximum, "min": np.minimum}


@pytest.mark.filterwarnings("ignore:invalid value encountered")
@pytest.mark.parametrize("ranks", [2, 3, 8])
def test_folds_equal_numpy_bit_for_bit_with_nans_and_signed_zeros(ranks: int) -> None:
    rng = np.random.default_rng(ranks)
    inputs = [
        [rng.choice(SPECIALS, 4), rng.standard_normal(3), rng.choice(SPECIALS, 2)]
        for _ in range(ranks)
    ]
    ops = ("sum", "max", "min")
    per_rank = [fused.flatten(list(zip(arrays, ops, strict=True))) for arrays in inputs]
    acc, spans = per_rank[0]
    by_rows, by_block = list(acc), list(acc)
    for values, _ in per_rank[1:]:
        fused.fold(by_rows, values, spans)
    fused.fold_rows(by_block, [v for values, _ in per_rank[1:] for v in values], spans)
    parts = list(zip(inputs[0], ops, strict=True))
    for got in (by_rows, by_block):
        results = fused.split(got, parts, spans, ranks)
        for k, op in enumerate(ops):
            expected = functools.reduce(NUMPY[op], [arrays[k] for arrays in inputs])
            nan = np.isnan(expected)
            assert (np.isnan(results[k]) == nan).all(), (op, got)
            assert results[k][~nan].tobytes() == expected[~nan].tobytes(), (op, got)


def test_a_mean_part_is_divided_by_the_world() -> None:
    values, spans = fused.flatten([(np.array([3.0, 6.0]), "mean"), (np.array([1.0]), "sum")])
    mean, total = fused.split(values, [(np.zeros(2), "mean"), (np.zeros(1), "sum")], spans, 3)
    assert mean.tolist() == [1.0, 2.0] and total.tolist() == [1.0]
