"""A stand-in accelerator in gateware, to test the link before a real network is wired in.

:class:`StandInAccelerator` has the members of
:func:`~.linkgw.accelerator_signature` and behaves like the Python
:class:`~.linkmodel.StandIn` (its twin; see there for the formulas): it stores weights,
biases and the input tensor, is busy for :data:`RUN_CYCLES` cycles after the last input
beat, then streams output beats that depend on every input bit, weight bit and register.
"""

from amaranth.hdl import Array, Cat, Const, Module, Signal, unsigned
from amaranth.lib import memory, wiring

from .linkgw import _check_descriptor, accelerator_signature

__all__ = ["RUN_CYCLES", "StandInAccelerator"]

#: Cycles ``busy`` is high after the last input beat.
RUN_CYCLES = 4


def _fold(value, width):
    """XOR of the ``width``-bit chunks of ``value`` (the twin of ``linkmodel.fold``)."""
    n = len(value)
    padded = Cat(value, Const(0, (-n) % width))
    out = padded[:width]
    for k in range(width, len(padded), width):
        out = out ^ padded[k:k + width]
    return out


class StandInAccelerator(wiring.Component):
    """A stand-in for :class:`~systolic.rtl.accelerator.Accelerator` behind the link.

    Parameters
    ----------
    descriptor : Descriptor
        Sizes of the streams and registers; the weight and bias memories have
        ``2**weight_addr_width`` words (keep it small).

    Members
    -------
    Those of :func:`~.linkgw.accelerator_signature` (the accelerator's view).

    Timing: takes ``w`` and ``i`` beats at one per cycle while waiting for input; busy for
    ``RUN_CYCLES`` cycles after the last input beat; then one output beat per cycle as
    ``o.ready`` allows.
    """

    def __init__(self, *, descriptor):
        self._descriptor = _check_descriptor(descriptor)
        super().__init__(accelerator_signature(descriptor))

    @property
    def descriptor(self):
        return self._descriptor

    def elaborate(self, platform):
        m = Module()
        d = self._descriptor
        C, L, aw = d.cols, d.layers, d.act_width
        IW, OW, D = d.input_words, d.output_words, 1 << d.weight_addr_width

        wmem = m.submodules.wmem = memory.Memory(shape=unsigned(d.weight_data_width),
                                                 depth=D, init=[])
        bmem = m.submodules.bmem = memory.Memory(shape=unsigned(d.weight_data_width),
                                                 depth=D, init=[])
        xmem = m.submodules.xmem = memory.Memory(shape=unsigned(C * aw), depth=IW, init=[])
        w_wr, b_wr, x_wr = wmem.write_port(), bmem.write_port(), xmem.write_port()
        w_rd = wmem.read_port(domain="comb")
        b_rd = bmem.read_port(domain="comb")
        x_rd = xmem.read_port(domain="comb")

        runs, beats = Signal(32), Signal(32)
        n = Signal(range(IW))
        timer = Signal(range(RUN_CYCLES + 1))
        e = Signal(range(OW))
        ie, we, le = Signal(range(IW)), Signal(range(D)), Signal(range(L))

        # the counter port: the word at the previous cycle's address
        words = Array([runs, beats] + [(self.seed + l)[:32] for l in range(L)] +
                      [self.rounding[l] * 256 + self.images for l in range(L)])
        m.d.sync += self.counter_data.eq(words[self.counter_addr])

        w = self.w.payload
        m.d.comb += [w_wr.addr.eq(w.addr), b_wr.addr.eq(w.addr),
                     w_wr.data.eq(w.data), b_wr.data.eq(w.data),
                     x_wr.addr.eq(n), x_wr.data.eq(self.i.payload),
                     w_rd.addr.eq(we), b_rd.addr.eq(we), x_rd.addr.eq(ie)]

        base = Signal(aw)
        m.d.comb += base.eq(_fold(w_rd.data, aw) + _fold(b_rd.data, aw) +
                            _fold(self.seed, aw) + self.rounding[le])
        x = x_rd.data.word_select  # lane j of the stored beat
        for j in range(C):
            with m.If(j < self.images):
                m.d.comb += self.o.payload.values[j].eq(x(j, aw) + base + j)
        m.d.comb += self.o.payload.last.eq(e == OW - 1)

        with m.FSM():
            with m.State("LOAD"):
                m.d.comb += [self.w.ready.eq(1), self.i.ready.eq(1)]
                with m.If(self.w.valid):
                    m.d.comb += [w_wr.en.eq(~w.bias), b_wr.en.eq(w.bias)]
                with m.If(self.i.valid):
                    m.d.comb += x_wr.en.eq(1)
                    m.d.sync += [n.eq(n + 1), beats.eq(beats + 1)]
                    with m.If(n == IW - 1):
                        m.d.sync += [n.eq(0), runs.eq(runs + 1), timer.eq(RUN_CYCLES)]
                        m.next = "BUSY"
            with m.State("BUSY"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 1):
                    m.d.sync += [e.eq(0), ie.eq(0), we.eq(0), le.eq(0)]
                    m.next = "OUTPUT"
            with m.State("OUTPUT"):
                m.d.comb += self.o.valid.eq(1)
                with m.If(self.o.ready):
                    m.d.sync += [e.eq(e + 1), we.eq(we + 1), le.eq(le + 1)]
                    with m.If(ie == IW - 1):
                        m.d.sync += ie.eq(0)
                    with m.Else():
                        m.d.sync += ie.eq(ie + 1)
                    with m.If(le == L - 1):
                        m.d.sync += le.eq(0)
                    with m.If(e == OW - 1):
                        m.next = "LOAD"
        return m
