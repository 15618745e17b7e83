"""A network trained in fixed point with stochastic rounding (golden/fxtrain.py, issue 6)
runs bit-exact on the accelerator under Verilator: the exported QNetwork is what the
hardware computes, to the last rounding bit, with every counter as the compiler predicts.

Training is short here (2 epochs on 400 real MNIST images) to keep CI fast; the network is
the paper's CNN with 16-bit operands, as ``systolic train gupta-cnn`` makes it."""

import numpy as np
import pytest

from systolic.golden import datasets, fxtrain, models
from systolic.golden.run import run
from systolic.rtl.compiler import ArrayConfig, compile_network
from systolic.sim.accel import simulate


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["stochastic", "nearest_even"])
def test_trained_network_runs_bit_exact_on_the_accelerator(mode):
    images, labels = datasets.mnist("train")
    hold, hold_labels = datasets.mnist("holdout")
    cfg = fxtrain.FxConfig(mode=mode, frac=12, epochs=2, batch_size=20, lr=0.1, seed=3)
    result = fxtrain.train("gupta-cnn", cfg, train_data=(images[:400], labels[:400]),
                           test_data=(hold[:100], hold_labels[:100]), name=f"gupta-{mode}")
    net = result.network
    assert max(f.width for f in net.tensor_formats) == 16      # 16-bit, as in the paper
    assert result.history[-1].test_error < 0.5, "the short training did learn"
    program = compile_network(net, ArrayConfig(rows=4, cols=3))
    x = models.mnist_input(net, hold[:5])
    sim = simulate(program, x)
    assert sim.ok, (sim.mismatches[:3], sim.counter_mismatches)
    want = run(net, x).logits
    np.testing.assert_array_equal(sim.outputs.reshape(want.shape), want)
    assert sim.images == 5 and sim.bit_exact == 5
