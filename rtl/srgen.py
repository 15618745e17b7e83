"""The stochastic-rounding generator ``H(seed, layer, i)`` in hardware.

Both units are generated from the constants of :mod:`systolic.golden.srgen` (rounds, word
width, rotations, key constant), never restated here, so RTL and golden cannot drift apart.

* :class:`SRKeySchedule` turns ``(seed, layer)`` into the round keys, one round per cycle,
  once per layer; its keys are shared by every requantization lane.
* :class:`SRRounds` encrypts a counter with those keys: the per-element datapath, pipelined
  ``rounds_per_stage`` rounds per register stage.
"""

from amaranth.hdl import Array, Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from systolic.golden import srgen

__all__ = ["SRKeySchedule", "SRRounds", "speck_round", "check_rounds_per_stage",
           "pipeline_stages"]

_W = srgen.WORD


def _rotl(v, r):
    return Cat(v[_W - r:], v[:_W - r])


def _rotr(v, r):
    return Cat(v[r:], v[:r])


def speck_round(x, y, k):
    """One round as Amaranth expressions: ``x' = ((x >>> a) + y) ^ k``, ``y' = (y <<< b) ^ x'``.

    Returns ``(x', y')``, each 16 bits."""
    x2 = ((_rotr(x, srgen.ROT_X) + y)[:_W]) ^ k
    y2 = _rotl(y, srgen.ROT_Y) ^ x2
    return x2, y2


def check_rounds_per_stage(value):
    """Return ``value`` if it is a valid ``rounds_per_stage``; raise otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TypeError(f"Rounds per stage must be a positive integer, not {value!r}")
    if value > srgen.ROUNDS:
        raise ValueError(f"Rounds per stage must be at most {srgen.ROUNDS}, not {value}")
    return value


def pipeline_stages(rounds_per_stage):
    """Register stages (the latency) of :class:`SRRounds` with ``rounds_per_stage``."""
    return -(-srgen.ROUNDS // rounds_per_stage)


class SRKeySchedule(wiring.Component):
    """Round keys of ``H`` for ``(seed, layer)``, computed one round per cycle.

    Pulse ``start`` with ``seed`` and ``layer`` held; ``done`` rises ``ROUNDS - 1`` cycles later
    and stays high (with ``keys`` valid) until the next ``start``.

    Members
    -------
    seed : In(32)
    layer : In(16)
    start : In(1)
    keys : Out(ArrayLayout-like vector of ROUNDS x 16 bits)
        ``keys[j]`` is round key ``j`` (flat: bits ``16*j .. 16*j+15``).
    done : Out(1)

    Latency ``ROUNDS - 1`` cycles from ``start``; cost one 16-bit adder.
    """

    seed: In(srgen.SEED_BITS)
    layer: In(srgen.LAYER_BITS)
    start: In(1)
    keys: Out(srgen.ROUNDS * _W)
    done: Out(1)

    def elaborate(self, platform):
        m = Module()
        rounds = srgen.ROUNDS
        k = Array(Signal(_W, name=f"k{j}") for j in range(rounds))
        # l[j+3] is produced at step j; only the three newest l words are ever read.
        l = [Signal(_W, name=f"l{j}") for j in range(3)]
        step = Signal(range(rounds + 1), init=rounds)
        m.d.comb += self.keys.eq(Cat(*k))
        m.d.comb += self.done.eq(step == rounds - 1)

        # ``kc`` is k[step], kept beside the key registers: read through a 9:1 multiplexer
        # on ``step``, k[step] into the adder was the ECP5 critical path.
        kc = Signal(_W)
        with m.If(self.start):
            m.d.sync += [
                k[0].eq(self.seed[:_W]), kc.eq(self.seed[:_W]),
                l[0].eq(self.seed[_W:]), l[1].eq(self.layer), l[2].eq(srgen.KEY_CONST),
                step.eq(0),
            ]
        with m.Elif(step < rounds - 1):
            # l[j+3] = (k[j] + (l[j] >>> 7)) ^ j ; k[j+1] = (k[j] <<< 2) ^ l[j+3]
            new_l = ((kc + _rotr(l[0], 7))[:_W]) ^ step
            new_k = _rotl(kc, 2) ^ new_l
            m.d.sync += [
                k[step + 1].eq(new_k), kc.eq(new_k),
                l[0].eq(l[1]), l[1].eq(l[2]), l[2].eq(new_l),
                step.eq(step + 1),
            ]
        return m


class SRRounds(wiring.Component):
    """The keyed permutation of the counter: ``H = E_keys(index)``, pipelined.

    A pipeline of ``ceil(ROUNDS / rounds_per_stage)`` register stages with a shared enable:
    the caller owns the handshake (``enable`` advances every stage by one).

    Parameters
    ----------
    rounds_per_stage : int
        Rounds computed between registers (1..ROUNDS).  Fewer means higher Fmax and more
        flip-flops.

    Members
    -------
    keys : In(ROUNDS * 16)
        From :class:`SRKeySchedule`; constant while a layer runs.
    index : In(32)
    enable : In(1)
    h : Out(32)
        ``H(seed, layer, index)`` of the index presented :attr:`latency` enabled cycles
        earlier.

    Latency ``ceil(ROUNDS / rounds_per_stage)`` enabled cycles; throughput one per cycle;
    cost ``ROUNDS`` 16-bit adders and ``2 * ROUNDS`` 16-bit xors (no multiplier).
    """

    keys: In(srgen.ROUNDS * _W)
    index: In(srgen.INDEX_BITS)
    enable: In(1)
    h: Out(32)

    def __init__(self, *, rounds_per_stage=3):
        self._rounds_per_stage = check_rounds_per_stage(rounds_per_stage)
        super().__init__()

    @property
    def rounds_per_stage(self):
        return self._rounds_per_stage

    @property
    def latency(self):
        return pipeline_stages(self._rounds_per_stage)

    def elaborate(self, platform):
        m = Module()
        x, y = self.index[_W:], self.index[:_W]
        for j in range(srgen.ROUNDS):
            # Named wires per round: nested expressions would repeat x in both words and
            # grow exponentially in the simulator.
            xn, yn = Signal(_W, name=f"x{j}"), Signal(_W, name=f"y{j}")
            m.d.comb += Cat(xn, yn).eq(Cat(*speck_round(x, y, self.keys[_W * j:_W * (j + 1)])))
            x, y = xn, yn
            if (j + 1) % self._rounds_per_stage == 0 or j == srgen.ROUNDS - 1:
                # data: no reset (the caller's valid flags go alongside)
                xr = Signal(_W, name=f"x_r{j}", reset_less=True)
                yr = Signal(_W, name=f"y_r{j}", reset_less=True)
                with m.If(self.enable):
                    m.d.sync += [xr.eq(x), yr.eq(y)]
                x, y = xr, yr
        m.d.comb += self.h.eq(Cat(y, x))
        return m
