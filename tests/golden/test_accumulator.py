"""Accumulator sizing (golden/accumulator.py): exact bounds, checked by brute force."""

import itertools

import pytest

from systolic.golden import models
from systolic.golden.accumulator import (accumulator_width, check_accumulator_width,
                                         layer_accumulator_width, network_accumulator_width)
from systolic.golden.errors import ConstraintError


@pytest.mark.parametrize("wi, ww, k", [(2, 2, 1), (2, 3, 3), (3, 3, 2), (4, 2, 5), (8, 8, 1)])
def test_width_is_the_smallest_that_holds_every_sum(wi, ww, k):
    lo_i, hi_i = -(1 << (wi - 1)), (1 << (wi - 1)) - 1
    lo_w, hi_w = -(1 << (ww - 1)), (1 << (ww - 1)) - 1
    products = {a * b for a in range(lo_i, hi_i + 1) for b in range(lo_w, hi_w + 1)}
    largest = k * max(products)
    smallest = k * min(products)
    w = accumulator_width(wi, ww, k)
    assert -(1 << (w - 1)) <= smallest and largest <= (1 << (w - 1)) - 1
    # one bit fewer overflows on the largest sum
    assert largest > (1 << (w - 2)) - 1


def test_brute_force_small_reduction():
    wi, ww, k = 3, 2, 3
    vals_i, vals_w = range(-4, 4), range(-2, 2)
    sums = [sum(a * b for a, b in zip(x, y))
            for x in itertools.product(vals_i, repeat=k) for y in itertools.product(vals_w,
                                                                                  repeat=k)]
    w = accumulator_width(wi, ww, k)
    assert max(sums) == k * 4 * 2  # (-4) * (-2) three times: the bound is reached
    assert max(sums) > (1 << (w - 2)) - 1  # so one bit fewer would overflow
    assert -(1 << (w - 1)) <= min(sums) and max(sums) <= (1 << (w - 1)) - 1


def test_bias_widens():
    assert accumulator_width(8, 8, 25, bias_bound=1 << 20) > accumulator_width(8, 8, 25)


def test_lenet5_widths_and_rejection():
    net = models.load("lenet5")
    widths = [layer_accumulator_width(net, j) for j in range(len(net.layers))]
    assert widths[1] is None and widths[3] is None   # max pools
    need = network_accumulator_width(net)
    assert need == max(w for w in widths if w is not None)
    check_accumulator_width(net, need)
    worst = widths.index(need)
    with pytest.raises(ConstraintError, match=rf"Layer {worst} \(\w+\) needs a {need}-bit "
                                              rf"accumulator .* a {need - 1}-bit accumulator "
                                              rf"could overflow"):
        check_accumulator_width(net, need - 1)


@pytest.mark.parametrize("args", [(0, 8, 1), (8, 8, 0), (8, 8.0, 3), (True, 8, 3)])
def test_rejects_bad_arguments(args):
    with pytest.raises(TypeError, match="must be a positive integer"):
        accumulator_width(*args)
