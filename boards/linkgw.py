"""The device end of the host link in gateware: frame decoder, command engine, encoder.

The protocol is specified in :mod:`.link`; :class:`~.linkmodel.LinkModel` is the
reference this gateware is compared to, byte for byte.  The pieces::

    rx pin -> UARTRx -> gap marker -> RX FIFO -> FrameDecoder --event--> LinkEngine
                                                      |                    |  ^
                                             frame buffer (256 x 8) <------+  |
                                                                           v  |
    tx pin <- UARTTx <------------- FrameEncoder <---- header, bytes ------+  |
                                                                              |
                                            accelerator interface <-----------+

* The **gap marker** puts a marker into the RX FIFO when the line has been idle for
  ``gap_bits`` bit times after a character, so the decoder sees the gap in order with
  the bytes even when it is busy.  When the FIFO is full a character (or marker) is
  lost; a *lost* marker follows as soon as there is room (or the next character carries
  the error), so the frame it belonged to gets an *rx* NAK.
* The **decoder** writes a frame's payload into the frame buffer and presents an
  *event* (a good frame's header, or an error reason) until the engine has finished
  with it, so the buffer is never overwritten while in use; bytes arriving meanwhile
  wait in the RX FIFO (``rx_depth`` bytes: enough for a whole frame while the longest
  response is sent, so a stop-and-wait host never loses a byte).
* The **engine** executes the command (reading the payload, writing the response into
  the same buffer) and hands the response to the **encoder**, which adds SYNC, header
  and CRC.

The accelerator interface (:func:`accelerator_signature`) is the
:class:`~systolic.rtl.accelerator.Accelerator`'s own members minus ``step``, so the board
top connects them with :func:`connect_accelerator`; a stand-in with the same signature
(:class:`~.standin.StandInAccelerator`) tests the link without a real network.
``accel_reset`` pulses on RESET: the board top resets the accelerator with it (through a
register, as the reset of the accelerator's own clock domain) so that a half-loaded input
is forgotten (memories, and so the weights, keep their contents).
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import crc, data, memory, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from systolic.rtl._params import check_int

from .link import (COMMANDS, COUNTER_CHUNK, NAK, NAK_REASONS, PAYLOAD_MAX, RESPONSE, STATUS,
                   SYNC, Descriptor)
from .uart import UARTRx, UARTTx

__all__ = ["accelerator_signature", "connect_accelerator", "rx_event_layout",
           "event_layout", "header_layout", "FrameDecoder", "FrameEncoder", "LinkEngine",
           "LinkDevice"]

#: An entry of the RX FIFO: a character (``error``: framing error, or characters lost
#: before it), or with ``gap`` set a marker: the idle line (``error`` clear) or lost
#: characters (``error`` set).
rx_event_layout = data.StructLayout({"data": 8, "error": 1, "gap": 1})
#: The decoder's output: a good frame's header (``reason`` 0) or an error (the NAK reason).
event_layout = data.StructLayout({"reason": 8, "cmd": 8, "seq": 8, "length": 8})
#: A frame the encoder is to send: its header; ``length`` payload bytes follow.
header_layout = data.StructLayout({"cmd": 8, "seq": 8, "length": 8})

_CRC = crc.catalog.CRC16_CCITT_FALSE(data_width=8)


def _check_bool(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, not {value!r}")
    return value


def _check_descriptor(descriptor):
    if not isinstance(descriptor, Descriptor):
        raise TypeError(f"Descriptor must be a Descriptor, not {descriptor!r}")
    return descriptor


def accelerator_signature(descriptor):
    """The accelerator's side of the link: the members of
    :class:`~systolic.rtl.accelerator.Accelerator` that the link drives and reads (all but
    ``step``), sized by ``descriptor``.

    Members (accelerator's view)
    ----------------------------
    i : In(stream.Signature(ArrayLayout(signed(act_width), C)))
    o : Out(stream.Signature(StructLayout{values: ArrayLayout(signed(act_width), C), last}))
    w : In(stream.Signature(StructLayout{bias: 1, addr, data}))
    rounding : In(ArrayLayout(unsigned(2), L)); seed : In(32); images : In(range(C + 1))
    busy : Out(1)
    counter_addr : In(range(2 + 2L)); counter_data : Out(32)
        The counter port: ``counter_data`` is the word (``cycles, beats, layer_cycles[L],
        saturations[L]``) at the previous cycle's ``counter_addr``; the accelerator's
        ``counter_port`` form.
    """
    d = _check_descriptor(descriptor)
    C, L, aw = d.cols, d.layers, d.act_width
    return wiring.Signature({
        "i": In(stream.Signature(data.ArrayLayout(signed(aw), C))),
        "o": Out(stream.Signature(data.StructLayout({
            "values": data.ArrayLayout(signed(aw), C), "last": 1}))),
        "w": In(stream.Signature(data.StructLayout({
            "bias": 1, "addr": unsigned(d.weight_addr_width),
            "data": unsigned(d.weight_data_width)}))),
        "rounding": In(data.ArrayLayout(unsigned(2), L)),
        "seed": In(32),
        "images": In(range(C + 1)),
        "busy": Out(1),
        "counter_addr": In(range(d.counter_words)),
        "counter_data": Out(32),
    })


def connect_accelerator(m, port, accel):
    """Connect a link's ``accel`` port to an accelerator (or stand-in) that has at least
    the members of :func:`accelerator_signature`; extra members (``step``) are left
    alone."""
    for name in ("i", "o", "w"):
        wiring.connect(m, getattr(port, name), getattr(accel, name))
    m.d.comb += [accel.rounding.eq(port.rounding), accel.seed.eq(port.seed),
                 accel.images.eq(port.images), accel.counter_addr.eq(port.counter_addr),
                 port.busy.eq(accel.busy), port.counter_data.eq(accel.counter_data)]


class FrameDecoder(wiring.Component):
    """Frames from received characters (the decoding rules of :mod:`.link`).

    Members
    -------
    i : In(stream.Signature(rx_event_layout))
        Characters and idle-line markers.
    o : Out(stream.Signature(event_layout))
        One event per good frame or error, held until the consumer is done with the
        frame buffer; no input is taken meanwhile.
    wr_addr : Out(8); wr_data : Out(8); wr_en : Out(1)
        Payload byte ``k`` of the frame being received goes to address ``k`` of the
        frame buffer.

    Latency: the event is valid 2 cycles after the last CRC byte is taken.  Throughput:
    one character per cycle while no event is pending.
    """

    i: In(stream.Signature(rx_event_layout))
    o: Out(stream.Signature(event_layout))
    wr_addr: Out(8)
    wr_data: Out(8)
    wr_en: Out(1)

    def elaborate(self, platform):
        m = Module()
        m.submodules.crc = crc_ = _CRC.create()
        length = Signal(8)
        count = Signal(8)
        # payload bytes still to come: a compare with a constant ends the payload, where
        # ``count == length - 1`` put a subtraction in front of the FSM (an iCE40 timing path)
        remaining = Signal(8)
        cmd, seq = Signal(8), Signal(8)
        b = self.i.payload.data
        take = Signal()
        checking = Signal()
        m.d.comb += [self.i.ready.eq(~self.o.valid & ~checking), take.eq(self.i.valid &
                                                                        self.i.ready)]
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)

        # The header fields are the decoder's own registers, which hold while an event is
        # valid (no input is taken then); only the reason is registered with the event.
        # (Registering all 28 bits put the OR of every event's condition on their enables,
        # an iCE40 critical path.)  A NAK's header fields are not used.
        m.d.comb += [self.o.payload.cmd.eq(cmd), self.o.payload.seq.eq(seq),
                     self.o.payload.length.eq(length)]

        def event(reason):
            m.d.sync += [self.o.valid.eq(1), self.o.payload.reason.eq(reason)]

        m.d.comb += [self.wr_addr.eq(count), self.wr_data.eq(b), crc_.data.eq(b)]
        with m.FSM():
            # states after SYNC1: a frame is in progress
            in_frame = ("LEN", "CMD", "SEQ", "PAYLOAD", "CRC0", "CRC1")
            for name in ("HUNT", "SYNC1") + in_frame:
                with m.State(name):
                    with m.If(take & (self.i.payload.gap | self.i.payload.error)):
                        if name in in_frame:
                            event(Mux(self.i.payload.error, NAK_REASONS["rx"],
                                      NAK_REASONS["timeout"]))
                        m.next = "HUNT"
                    with m.Elif(take):
                        if name == "HUNT":
                            with m.If(b == SYNC[0]):
                                m.next = "SYNC1"
                        elif name == "SYNC1":
                            with m.If(b == SYNC[1]):
                                m.next = "LEN"
                            with m.Elif(b != SYNC[0]):
                                m.next = "HUNT"
                        else:
                            m.d.comb += crc_.valid.eq(1)
                        if name == "LEN":
                            m.d.comb += crc_.start.eq(1)
                            m.d.sync += [length.eq(b), remaining.eq(b), count.eq(0)]
                            with m.If(b > PAYLOAD_MAX):
                                event(NAK_REASONS["length"])
                                m.next = "HUNT"
                            with m.Else():
                                m.next = "CMD"
                        elif name == "CMD":
                            m.d.sync += cmd.eq(b)
                            m.next = "SEQ"
                        elif name == "SEQ":
                            m.d.sync += seq.eq(b)
                            m.next = "PAYLOAD"
                            with m.If(length == 0):
                                m.next = "CRC0"
                        elif name == "PAYLOAD":
                            m.d.comb += self.wr_en.eq(1)
                            m.d.sync += [count.eq(count + 1), remaining.eq(remaining - 1)]
                            with m.If(remaining == 1):
                                m.next = "CRC0"
                        elif name == "CRC0":
                            m.next = "CRC1"
                        elif name == "CRC1":
                            m.next = "CHECK"
            with m.State("CHECK"):
                # the CRC register has taken the last byte: a good frame leaves residue 0
                m.d.comb += checking.eq(1)
                event(Mux(crc_.match_detected, 0, NAK_REASONS["crc"]))
                m.next = "HUNT"
        return m


class FrameEncoder(wiring.Component):
    """Frames from a header and payload bytes: SYNC, LEN, CMD, SEQ, payload, CRC.

    Members
    -------
    h : In(stream.Signature(header_layout))
        Taken when the previous frame is complete.
    i : In(stream.Signature(8))
        The ``length`` payload bytes of the frame whose header was taken.
    o : Out(stream.Signature(8))
        The frame's bytes.

    Latency: the first byte is valid the cycle after the header is taken; payload bytes
    pass through combinationally.  Throughput: one byte per cycle.
    """

    h: In(stream.Signature(header_layout))
    i: In(stream.Signature(8))
    o: Out(stream.Signature(8))

    def elaborate(self, platform):
        m = Module()
        m.submodules.crc = crc_ = _CRC.create()
        hdr = Signal(header_layout)
        remaining = Signal(8)   # payload bytes still to send (compared with a constant)
        sent = Signal()
        m.d.comb += [sent.eq(self.o.valid & self.o.ready), crc_.data.eq(self.o.payload)]
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.h.ready.eq(1)
                with m.If(self.h.valid):
                    m.d.sync += [hdr.eq(self.h.payload), remaining.eq(self.h.payload.length)]
                    m.next = "SYNC0"
            with m.State("SYNC0"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(SYNC[0])]
                with m.If(sent):
                    m.next = "SYNC1"
            with m.State("SYNC1"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(SYNC[1])]
                with m.If(sent):
                    m.next = "LEN"
            with m.State("LEN"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(hdr.length),
                             crc_.start.eq(1), crc_.valid.eq(sent)]
                with m.If(sent):
                    m.next = "CMD"
            with m.State("CMD"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(hdr.cmd),
                             crc_.valid.eq(sent)]
                with m.If(sent):
                    m.next = "SEQ"
            with m.State("SEQ"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(hdr.seq),
                             crc_.valid.eq(sent)]
                with m.If(sent):
                    m.next = "DATA"
                    with m.If(hdr.length == 0):
                        m.next = "CRC0"
            with m.State("DATA"):
                m.d.comb += [self.o.valid.eq(self.i.valid), self.o.payload.eq(self.i.payload),
                             self.i.ready.eq(self.o.ready), crc_.valid.eq(sent)]
                with m.If(sent):
                    m.d.sync += remaining.eq(remaining - 1)
                    with m.If(remaining == 1):
                        m.next = "CRC0"
            with m.State("CRC0"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(crc_.crc[8:])]
                with m.If(sent):
                    m.next = "CRC1"
            with m.State("CRC1"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(crc_.crc[:8])]
                with m.If(sent):
                    m.next = "IDLE"
        return m


def register_stream(m, name, src, dst, reset=None):
    """``src`` to ``dst`` through a one-entry register: every signal ``dst`` sees, and
    ``src.ready``, come from flip-flops, so neither side's logic reaches the other's in
    one cycle.  One beat per two cycles (far above the UART's rate); ``reset`` empties
    it."""
    full = Signal(name=f"{name}_full")
    payload = Signal.like(src.payload, name=f"{name}_payload")
    m.d.comb += [src.ready.eq(~full), dst.valid.eq(full), dst.payload.eq(payload)]
    with m.If(full & dst.ready):
        m.d.sync += full.eq(0)
    with m.If(src.valid & ~full):
        m.d.sync += [full.eq(1), payload.eq(src.payload)]
    if reset is not None:
        with m.If(reset):
            m.d.sync += full.eq(0)


def _length_mask(ok):
    """A 256-bit constant whose bit ``n`` says whether payload length ``n`` is valid."""
    return Const(sum(1 << n for n in range(256) if ok(n)), 256)


class LinkEngine(wiring.Component):
    """The command engine: executes the commands of :mod:`.link` on the accelerator
    interface and writes the responses.

    Parameters
    ----------
    descriptor : Descriptor
        The device's descriptor (PING's answer); its ``rounding`` and ``seed`` are the
        registers' reset values.
    registered_buffers : bool
        Use the block RAMs' read data (frame and output buffers) and the accelerator's
        output beats only from registers: a byte is range-checked a cycle after it is
        read, output beats and response bytes are latched before use (a few cycles more
        per response).  For the ECP5, whose DP16KD read (5.8 ns clock-to-output) leaves
        ~2 ns of the 8 ns period; the iCE40 boards, at 42 MHz, save the ~50-90 logic
        cells.

    Members
    -------
    event : In(stream.Signature(event_layout))
        From :class:`FrameDecoder`; taken (``ready``) when the response has been handed
        to the encoder, so the frame buffer is the engine's while ``event.valid``.
    rd_addr : Out(8); rd_data : In(8)
        The frame buffer's read port (synchronous, always enabled: ``rd_data`` is the byte
        at the previous cycle's ``rd_addr``).
    wr_addr : Out(8); wr_data : Out(8); wr_en : Out(1)
        The frame buffer's write port (responses are built in place).
    h : Out(stream.Signature(header_layout)); tx : Out(stream.Signature(8))
        To :class:`FrameEncoder`.
    accel : In(accelerator_signature(descriptor))
        The accelerator (the link drives ``i``, ``w`` and the registers, takes ``o``).
    accel_reset : Out(1)
        One-cycle pulse on RESET: the board top resets the accelerator with it.

    Latency: the response header is offered at most ``13 + 2 * LEN + 2 * N`` cycles after
    the event (``LEN``: the command's payload bytes, ``N``: the response's data bytes;
    plus any back-pressure of ``accel.i`` and ``accel.w``).  Throughput: one response
    byte per 2 cycles to the encoder (the UART takes ``10 * divisor + 1``).  Output beats
    are taken from ``accel.o`` in every cycle (``o.ready`` is always 1).
    """

    def __init__(self, *, descriptor, registered_buffers=False):
        self._descriptor = _check_descriptor(descriptor)
        self._registered_buffers = _check_bool("Registered buffers", registered_buffers)
        super().__init__({
            "event": In(stream.Signature(event_layout)),
            "rd_addr": Out(8), "rd_data": In(8),
            "wr_addr": Out(8), "wr_data": Out(8), "wr_en": Out(1),
            "h": Out(stream.Signature(header_layout)),
            "tx": Out(stream.Signature(8)),
            "accel": In(accelerator_signature(descriptor)),
            "accel_reset": Out(1),
        })

    @property
    def descriptor(self):
        return self._descriptor

    def elaborate(self, platform):
        m = Module()
        d = self._descriptor
        C, L, aw = d.cols, d.layers, d.act_width
        IW, OW, IB, WB = d.input_words, d.output_words, d.input_bytes, d.weight_beat_bytes
        NC = d.counter_words
        acc = self.accel
        ev = self.event.payload
        length, cmd = ev.length, ev.cmd

        # -- state ------------------------------------------------------------------------
        default_rounding = sum(r << (2 * j) for j, r in enumerate(d.rounding))
        rounding = Signal(2 * L, init=default_rounding)
        seed = Signal(32, init=d.seed)
        images = Signal(range(C + 1), init=C)
        m.d.comb += [acc.rounding.eq(rounding), acc.seed.eq(seed), acc.images.eq(images)]
        session = Signal(8)
        last_valid = Signal()
        last_seq, last_cmd, last_status = Signal(8), Signal(8), Signal(8)
        loaded = Signal(range(IW + 1))
        # (IW - loaded) * IB, the input bytes LOAD_INPUT may still send, kept next to
        # ``loaded``: computed in CHECK's cycle it was the iCE40 critical path
        room = Signal(range(IW * IB + 1), init=IW * IB)
        # flags kept beside their counters, so that no counter compare reaches the FSM or
        # the accelerator's handshakes (each was an iCE40 critical path in turn):
        # ``loaded == IW - 1`` (the next beat is the tensor's last) and ``k == length``
        # (the frame's payload is used up) as of the next beat
        last_beat = Signal(init=int(IW == 1))
        k_end = Signal()
        held = Signal(C * aw)
        running, done = Signal(), Signal()
        produced = Signal(range(OW + 1))

        # -- output buffer: every output beat of the accelerator is captured --------------
        outbuf = m.submodules.outbuf = memory.Memory(shape=unsigned(C * aw), depth=OW, init=[])
        out_wr = outbuf.write_port()
        out_rd = outbuf.read_port()
        reg = self._registered_buffers
        if reg:
            # through a register (the accelerator's ready is always high): its beat comes
            # straight from its activation block RAMs, whose clock-to-output (5.8 ns on
            # the ECP5) left too little of the period for the way into this buffer
            o_valid = Signal()
            o_values = Signal(C * aw)
            m.d.sync += [o_valid.eq(acc.o.valid), o_values.eq(acc.o.payload.values)]
        else:
            o_valid, o_values = acc.o.valid, acc.o.payload.values
        m.d.comb += [acc.o.ready.eq(1), out_wr.addr.eq(produced), out_wr.data.eq(o_values)]
        with m.If(o_valid & (produced < OW)):
            m.d.comb += out_wr.en.eq(1)
            m.d.sync += produced.eq(produced + 1)
            with m.If(produced == OW - 1):
                m.d.sync += [running.eq(0), done.eq(1)]

        # -- command registers ----------------------------------------------------------
        # The registers that take the frame buffer's bytes (args, beat, shadow, byte_r):
        # with registered buffers (the ECP5) they have no reset, so that the block RAM's
        # read data (a DP16KD's 5.8 ns clock-to-output) go straight into their data
        # inputs; with the reset a LUT stood between them, and that was the critical
        # path of both ULX3S builds (8.5 ns of the 8 ns period).  Each is written before
        # it is read in every command.
        args = Signal(48, reset_less=reg)   # payload bytes 0..5
        arg = [args[8 * k:8 * k + 8] for k in range(6)]
        off16 = args[:16]
        status = Signal(8)
        resp_cmd, resp_seq, resp_len = Signal(8), Signal(8), Signal(8)
        resp_last = Signal(8)               # resp_len - 1, kept beside it (no subtraction
        #                                     in front of the FSM: an iCE40 timing path)
        k = Signal(8)                       # payload byte index / loop counter
        j = Signal(range(max(WB, IB, 4) + 1))   # byte within a beat
        wp = Signal(8)                      # response write pointer
        # output beat / counter word index: CHECK has range-checked what is loaded
        e = Signal(range(max(OW, NC) + 1))
        last_e = Signal.like(e)
        beat = Signal(8 * max(WB, IB), reset_less=reg)
        shadow = Signal(2 * L, reset_less=reg)
        bad = Signal()
        byte_r = Signal(8, reset_less=reg)
        word = Signal(max(C * aw, 32))

        desc_bytes = d.to_bytes()
        rom = Array(Const(b, 8) for b in desc_bytes)
        status_word = Cat(running, done, acc.busy, Const(0, 5), loaded,
                          Const(0, 16 - len(loaded)), produced, Const(0, 16 - len(produced)))
        out_word = Cat(word[:C * aw] if reg else out_rd.data, Const(0, 8 * IB - C * aw))

        S = STATUS
        Cm = COMMANDS
        weights_len_ok = _length_mask(lambda n: n >= WB and n % WB == 0)
        load_len_ok = _length_mask(lambda n: n >= 2 + IB and (n - 2) % IB == 0)
        is_side_effect = Signal()
        m.d.comb += is_side_effect.eq(
            (cmd == Cm["RESET"]) | (cmd == Cm["SET_REGISTERS"]) |
            (cmd == Cm["WRITE_WEIGHTS"]) | (cmd == Cm["LOAD_INPUT"]) | (cmd == Cm["RUN"]))

        def respond(code):
            m.d.sync += status.eq(code)
            m.next = "RESP0"

        def write(addr, value):
            m.d.comb += [self.wr_en.eq(1), self.wr_addr.eq(addr), self.wr_data.eq(value)]

        m.d.comb += [out_rd.addr.eq(e), acc.counter_addr.eq(e)]
        # payloads are driven in every state (they matter only with valid): no gating logic
        in_beat = beat[len(beat) - 8 * IB:][:C * aw]
        release = Signal()
        m.d.comb += [acc.w.payload.eq(beat[len(beat) - 8 * WB:][:d.weight_beat_bits]),
                     acc.i.payload.eq(Mux(release, held, in_beat))]

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.event.valid):
                    with m.If(ev.reason != 0):
                        write(0, ev.reason)
                        m.d.sync += [resp_cmd.eq(NAK), resp_seq.eq(0), resp_len.eq(1),
                                     resp_last.eq(0)]
                        m.next = "SEND"
                    with m.Else():
                        m.d.comb += self.rd_addr.eq(0)
                        m.d.sync += [k.eq(0), resp_cmd.eq(RESPONSE | cmd),
                                     resp_seq.eq(ev.seq), wp.eq(2)]
                        m.next = "ARGS"

            with m.State("ARGS"):
                m.d.comb += self.rd_addr.eq(k + 1)
                m.d.sync += [args.eq(Cat(args[8:], self.rd_data)), k.eq(k + 1)]
                with m.If(k == 5):
                    m.next = "CHECK"

            # Every test of the command is registered here, one cycle before DISPATCH
            # decides: evaluated in one cycle with the priority chain, they were the
            # longest path of an iCE40 build (~44 ns, under half the 42 MHz target).
            f = {name: Signal(name=f"f_{name}") for name in (
                "dup", "len0", "len1", "len2", "len3", "len_regs", "wlen_ok", "llen_ok",
                "arg0_zero", "arg0_gt_c", "order", "no_room", "no_input", "out_bad",
                "not_ready", "cnt_bad")}
            is_cmd = {name: Signal(name=f"is_{name}") for name in Cm}
            with m.State("CHECK"):
                count_o, count_c = arg[2], arg[1]
                m.d.sync += [
                    f["dup"].eq(last_valid & (ev.seq == last_seq) & (cmd == last_cmd) &
                                is_side_effect),
                    f["len0"].eq(length == 0), f["len1"].eq(length == 1),
                    f["len2"].eq(length == 2), f["len3"].eq(length == 3),
                    f["len_regs"].eq(length == 5 + L),
                    f["wlen_ok"].eq(weights_len_ok.bit_select(length, 1)),
                    f["llen_ok"].eq(load_len_ok.bit_select(length, 1)),
                    f["arg0_zero"].eq(arg[0] == 0), f["arg0_gt_c"].eq(arg[0] > C),
                    f["order"].eq(off16 != loaded),
                    f["no_room"].eq(length - 2 > room),
                    f["no_input"].eq(loaded != IW),
                    f["out_bad"].eq((count_o == 0) | (count_o > d.output_chunk) |
                                    (off16 + count_o > OW)),
                    f["not_ready"].eq(off16 + count_o > produced),
                    f["cnt_bad"].eq((count_c == 0) | (count_c > COUNTER_CHUNK) |
                                    (arg[0] + count_c > NC)),
                ]
                m.d.sync += [is_cmd[name].eq(cmd == code) for name, code in Cm.items()]
                # READ_OUTPUT's and READ_COUNTERS' word range, loaded whatever the command
                # (only those two use it): loaded in DISPATCH, behind its priority chain,
                # its enable was an iCE40 critical path
                is_rc = cmd == Cm["READ_COUNTERS"]
                m.d.sync += [e.eq(Mux(is_rc, arg[0], off16)),
                             last_e.eq(Mux(is_rc, arg[0] + count_c, off16 + count_o) - 1)]
                m.next = "DISPATCH"

            with m.State("DISPATCH"):
                # The status is OK unless a branch below responds otherwise, so the
                # commands that run for many cycles finish by going to RESP0 without
                # writing it: its enable is then DISPATCH's choice alone, not an OR over
                # every state's end test (the iCE40 critical path, nine LUT levels).
                m.d.sync += [last_valid.eq(1), last_seq.eq(ev.seq), last_cmd.eq(cmd),
                             k.eq(0), j.eq(0), bad.eq(0), status.eq(S["OK"])]
                with m.If(f["dup"]):
                    respond(last_status)
                with m.Elif(is_cmd["PING"]):
                    with m.If(~f["len0"]):
                        respond(S["BAD_LENGTH"])
                    with m.Else():
                        m.next = "PING"
                with m.Elif(is_cmd["RESET"]):
                    with m.If(~f["len1"]):
                        respond(S["BAD_LENGTH"])
                    with m.Elif(f["arg0_zero"]):
                        respond(S["BAD_ARG"])
                    with m.Else():
                        m.d.comb += self.accel_reset.eq(1)
                        m.d.sync += [session.eq(arg[0]), loaded.eq(0), room.eq(IW * IB),
                                     last_beat.eq(IW == 1),
                                     running.eq(0),
                                     done.eq(0), produced.eq(0),
                                     rounding.eq(default_rounding), seed.eq(d.seed),
                                     images.eq(C)]
                        respond(S["OK"])
                with m.Elif(is_cmd["SET_REGISTERS"]):
                    with m.If(~f["len_regs"]):
                        respond(S["BAD_LENGTH"])
                    with m.Elif(running):
                        respond(S["BUSY"])
                    with m.Elif(f["arg0_gt_c"]):
                        respond(S["BAD_ARG"])
                    with m.Else():
                        m.d.comb += self.rd_addr.eq(5)
                        m.next = "REGS"
                with m.Elif(is_cmd["WRITE_WEIGHTS"]):
                    with m.If(~f["wlen_ok"]):
                        respond(S["BAD_LENGTH"])
                    with m.Elif(running):
                        respond(S["BUSY"])
                    with m.Else():
                        m.d.comb += self.rd_addr.eq(0)
                        m.next = "W_READ"
                with m.Elif(is_cmd["LOAD_INPUT"]):
                    with m.If(~f["llen_ok"]):
                        respond(S["BAD_LENGTH"])
                    with m.Elif(running):
                        respond(S["BUSY"])
                    with m.Elif(f["order"]):
                        respond(S["ORDER"])
                    with m.Elif(f["no_room"]):
                        respond(S["BAD_ARG"])
                    with m.Else():
                        m.d.comb += self.rd_addr.eq(2)
                        m.d.sync += k.eq(2)
                        m.next = "L_READ"
                with m.Elif(is_cmd["RUN"]):
                    with m.If(~f["len0"]):
                        respond(S["BAD_LENGTH"])
                    with m.Elif(running):
                        respond(S["BUSY"])
                    with m.Elif(f["no_input"]):
                        respond(S["NO_INPUT"])
                    with m.Else():
                        m.d.sync += [produced.eq(0), done.eq(0)]
                        m.next = "R_PUSH"
                with m.Elif(is_cmd["STATUS"]):
                    with m.If(~f["len0"]):
                        respond(S["BAD_LENGTH"])
                    with m.Else():
                        m.next = "STATUS"
                with m.Elif(is_cmd["READ_OUTPUT"]):
                    with m.If(~f["len3"]):
                        respond(S["BAD_LENGTH"])
                    with m.Elif(f["out_bad"]):
                        respond(S["BAD_ARG"])
                    with m.Elif(f["not_ready"]):
                        respond(S["NOT_READY"])
                    with m.Else():
                        m.next = "O_ADDR"
                with m.Elif(is_cmd["READ_COUNTERS"]):
                    with m.If(~f["len2"]):
                        respond(S["BAD_LENGTH"])
                    with m.Elif(f["cnt_bad"]):
                        respond(S["BAD_ARG"])
                    with m.Else():
                        m.next = "C_ADDR"
                with m.Else():
                    respond(S["UNKNOWN_COMMAND"])

            # SET_REGISTERS: rounding bytes 5..5+L-1 into a shadow, then all or nothing
            with m.State("REGS"):
                m.d.comb += self.rd_addr.eq(6 + k)
                m.d.sync += k.eq(k + 1)
                if reg:
                    # a byte is range-checked and shifted in from its copy a cycle later
                    # (the last one in REGS_COMMIT): the check on the block RAM's output
                    # was an ECP5 critical path, and so was the shift (the DP16KD's 5.8 ns
                    # clock-to-output and a LUT in front of the shadow's registers)
                    m.d.sync += byte_r.eq(self.rd_data)
                    with m.If(k != 0):
                        m.d.sync += shadow.eq(Cat(shadow[2:], byte_r[:2]))
                        with m.If(byte_r > 2):
                            m.d.sync += bad.eq(1)
                else:
                    m.d.sync += shadow.eq(Cat(shadow[2:], self.rd_data[:2]))
                    with m.If(self.rd_data > 2):
                        m.d.sync += bad.eq(1)
                with m.If(k == L - 1):
                    m.next = "REGS_COMMIT"
            with m.State("REGS_COMMIT"):
                with m.If(bad | (byte_r > 2) if reg else bad):
                    respond(S["BAD_ARG"])
                with m.Else():
                    m.d.sync += [images.eq(arg[0]), seed.eq(args[8:40]),
                                 rounding.eq(Cat(shadow[2:], byte_r[:2]) if reg else shadow)]
                    respond(S["OK"])

            # WRITE_WEIGHTS: WB bytes per beat into the w stream
            with m.State("W_READ"):
                m.d.comb += self.rd_addr.eq(k + 1)
                m.d.sync += [beat.eq(Cat(beat[8:], self.rd_data)), k.eq(k + 1), j.eq(j + 1)]
                with m.If(j == WB - 1):
                    m.d.sync += [j.eq(0), k_end.eq(k + 1 == length)]
                    m.next = "W_PUSH"
            with m.State("W_PUSH"):
                m.d.comb += [self.rd_addr.eq(k), acc.w.valid.eq(1)]
                with m.If(acc.w.ready):
                    with m.If(k_end):
                        m.next = "RESP0"      # the status is OK, set in DISPATCH
                    with m.Else():
                        m.next = "W_READ"

            # LOAD_INPUT: IB bytes per beat into the i stream; the tensor's last beat is held
            with m.State("L_READ"):
                m.d.comb += self.rd_addr.eq(k + 1)
                m.d.sync += [beat.eq(Cat(beat[8:], self.rd_data)), k.eq(k + 1), j.eq(j + 1)]
                with m.If(j == IB - 1):
                    m.d.sync += [j.eq(0), k_end.eq(k + 1 == length)]
                    m.next = "L_PUSH"
            with m.State("L_PUSH"):
                m.d.comb += self.rd_addr.eq(k)
                with m.If(last_beat):
                    m.d.sync += [held.eq(in_beat), loaded.eq(loaded + 1), room.eq(room - IB),
                                 last_beat.eq(0)]
                    m.next = "L_NEXT"
                with m.Else():
                    m.d.comb += acc.i.valid.eq(1)
                    with m.If(acc.i.ready):
                        m.d.sync += [loaded.eq(loaded + 1), room.eq(room - IB),
                                     last_beat.eq(loaded == IW - 2)]
                        m.next = "L_NEXT"
            with m.State("L_NEXT"):
                m.d.comb += self.rd_addr.eq(k)
                with m.If(k_end):
                    m.next = "RESP0"      # the status is OK, set in DISPATCH
                with m.Else():
                    m.next = "L_READ"

            # RUN: release the held beat
            with m.State("R_PUSH"):
                m.d.comb += [acc.i.valid.eq(1), release.eq(1)]
                with m.If(acc.i.ready):
                    m.d.sync += [running.eq(1), loaded.eq(0), room.eq(IW * IB),
                                 last_beat.eq(IW == 1)]
                    m.next = "RESP0"      # the status is OK, set in DISPATCH

            with m.State("PING"):
                write(wp, rom[k])
                m.d.sync += [wp.eq(wp + 1), k.eq(k + 1)]
                with m.If(k == len(desc_bytes) - 1):
                    m.next = "RESP0"      # the status is OK, set in DISPATCH

            with m.State("STATUS"):
                write(wp, status_word.word_select(k[:3], 8))
                m.d.sync += [wp.eq(wp + 1), k.eq(k + 1)]
                with m.If(k == 4):
                    m.next = "RESP0"      # the status is OK, set in DISPATCH

            # READ_OUTPUT: beats e..last_e, IB bytes each
            with m.State("O_ADDR"):
                # out_rd.data follows e one cycle later; with registered buffers the beat
                # passes `word` (its bytes selected straight from the block RAM's output
                # were an ECP5 timing path)
                if reg:
                    m.next = "O_WORD"
                else:
                    m.d.sync += j.eq(0)
                    m.next = "O_BYTES"
            if reg:
                with m.State("O_WORD"):
                    m.d.sync += [word.eq(out_rd.data), j.eq(0)]
                    m.next = "O_BYTES"
            with m.State("O_BYTES"):
                write(wp, out_word.word_select(j, 8))
                m.d.sync += [wp.eq(wp + 1), j.eq(j + 1)]
                with m.If(j == IB - 1):
                    m.d.sync += e.eq(e + 1)
                    with m.If(e == last_e):
                        m.next = "RESP0"      # the status is OK, set in DISPATCH
                    with m.Else():
                        m.next = "O_ADDR"

            # READ_COUNTERS: words e..last_e, 4 bytes each, through the accelerator's
            # counter port (addressed by ``e``, the word a cycle later)
            with m.State("C_ADDR"):
                m.next = "C_WORD"
            with m.State("C_WORD"):
                m.d.sync += [word.eq(acc.counter_data), j.eq(0)]
                m.next = "C_BYTES"
            with m.State("C_BYTES"):
                write(wp, word[:32].word_select(j[:2], 8))
                m.d.sync += [wp.eq(wp + 1), j.eq(j + 1)]
                with m.If(j == 3):
                    m.d.sync += e.eq(e + 1)
                    with m.If(e == last_e):
                        m.next = "RESP0"      # the status is OK, set in DISPATCH
                    with m.Else():
                        m.next = "C_ADDR"

            # the response's STATUS and SESSION bytes, then send
            with m.State("RESP0"):
                write(0, status)
                m.d.sync += [last_status.eq(status), resp_len.eq(wp), resp_last.eq(wp - 1)]
                m.next = "RESP1"
            with m.State("RESP1"):
                write(1, session)
                m.next = "SEND"

            with m.State("SEND"):
                m.d.comb += [self.h.valid.eq(1), self.h.payload.cmd.eq(resp_cmd),
                             self.h.payload.seq.eq(resp_seq),
                             self.h.payload.length.eq(resp_len),
                             self.rd_addr.eq(0)]
                with m.If(self.h.ready):
                    m.d.sync += k.eq(0)
                    m.next = "NEXT" if reg else "BYTE"
            # Each byte is read (NEXT) and sent (BYTE); with registered buffers it is
            # copied into a register (LATCH) in between: the byte straight from the block
            # RAM's output through the encoder's handshake register was an ECP5 path.
            with m.State("BYTE"):
                # rd_data is the byte at k (addressed in the previous cycle)
                m.d.comb += [self.tx.valid.eq(1),
                             self.tx.payload.eq(byte_r if reg else self.rd_data)]
                if not reg:
                    m.d.comb += self.rd_addr.eq(k)
                with m.If(self.tx.ready):
                    m.d.sync += k.eq(k + 1)
                    with m.If(k == resp_last):
                        m.next = "DONE"
                    with m.Else():
                        m.next = "NEXT"
            with m.State("NEXT"):
                m.d.comb += self.rd_addr.eq(k)
                m.next = "LATCH" if reg else "BYTE"
            if reg:
                with m.State("LATCH"):
                    m.d.sync += byte_r.eq(self.rd_data)
                    m.next = "BYTE"
            with m.State("DONE"):
                m.d.comb += self.event.ready.eq(1)
                m.next = "IDLE"
        return m


class LinkDevice(wiring.Component):
    """The whole device end: UART pins in and out, the accelerator interface.

    Parameters
    ----------
    descriptor : Descriptor
    divisor : int
        Clock cycles per UART bit (:func:`~.uart.uart_divisor`), at least 4.
    gap_bits : int
        The decoder's gap timeout: bit times of idle line that abort a partial frame
        (with a *timeout* NAK), at least 20 (two characters).
    rx_depth : int
        Characters the RX FIFO holds while the engine is busy, at least 16.  The default,
        512 (one iCE40 block RAM), covers a whole frame arriving while the longest
        response is sent.
    registered_buffers : bool
        As :class:`LinkEngine`'s (the board top sets it on the ECP5).

    Members
    -------
    rx : In(1, init=1); tx : Out(1, init=1)
        The UART pins.
    accel : In(accelerator_signature(descriptor))
    accel_reset : Out(1)
    error : Out(1)
        Pulses when a received frame is rejected (a NAK for a line error, a timeout, a bad
        length or CRC): the board top's link-error LED.

    Latency: a response's start bit leaves about ``21 + 2 * LEN + 2 * N`` cycles after the
    middle of the command's last stop bit (synchronizer, FIFO, decoder and
    :class:`LinkEngine`), when the device is idle.  Throughput: the line rate in both
    directions; the RX FIFO absorbs commands that arrive while a response is sent.

    Raises
    ------
    TypeError, ValueError
        A parameter of the wrong type or out of range.
    """

    def __init__(self, *, descriptor, divisor, gap_bits=1000, rx_depth=512,
                 registered_buffers=False):
        self._descriptor = _check_descriptor(descriptor)
        self._registered_buffers = _check_bool("Registered buffers", registered_buffers)
        self._divisor = check_int("UART divisor", divisor, lo=4)
        self._gap_bits = check_int("Gap timeout", gap_bits, lo=20)
        self._rx_depth = check_int("RX FIFO depth", rx_depth, lo=16)
        super().__init__({
            "rx": In(1, init=1),
            "tx": Out(1, init=1),
            "accel": In(accelerator_signature(descriptor)),
            "accel_reset": Out(1),
            "error": Out(1),
        })

    @property
    def descriptor(self):
        return self._descriptor

    @property
    def divisor(self):
        return self._divisor

    @property
    def gap_bits(self):
        return self._gap_bits

    @property
    def rx_depth(self):
        return self._rx_depth

    def elaborate(self, platform):
        m = Module()
        m.submodules.uart_rx = urx = UARTRx(divisor=self._divisor)
        m.submodules.uart_tx = utx = UARTTx(divisor=self._divisor)
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=rx_event_layout.size,
                                                    depth=self._rx_depth)
        m.submodules.decoder = dec = FrameDecoder()
        m.submodules.engine = eng = LinkEngine(descriptor=self._descriptor,
                                               registered_buffers=self._registered_buffers)
        m.submodules.encoder = enc = FrameEncoder()
        buf = m.submodules.buf = memory.Memory(shape=unsigned(8), depth=256, init=[])
        rd = buf.read_port()
        wr = buf.write_port()

        m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(utx.tx)]

        # -- characters and idle-line markers into the FIFO ------------------------------
        gap_cycles = self._gap_bits * self._divisor
        idle = Signal(range(gap_cycles + 1))
        armed = Signal()
        lost = Signal()
        entry = Signal(rx_event_layout)
        push = Signal()
        m.d.comb += urx.o.ready.eq(1)
        # ``idle >= gap_cycles - 1`` as a flag set as ``idle`` moves: the compare's carry
        # chain in front of the FIFO's write enable was an iCE40 critical path
        gap_due = Signal()
        with m.If(armed & ~urx.o.valid):
            m.d.sync += [idle.eq(idle + 1), gap_due.eq(idle >= gap_cycles - 2)]
        with m.If(urx.o.valid):
            # a character; if characters were lost just before it, it carries the error
            m.d.comb += [push.eq(1), entry.data.eq(urx.o.payload.data),
                         entry.error.eq(urx.o.payload.error | lost)]
            m.d.sync += [idle.eq(0), armed.eq(1), gap_due.eq(0)]
        with m.Elif(lost & fifo.w_rdy):
            # characters were lost: say so as soon as there is room (error and gap both set)
            m.d.comb += [push.eq(1), entry.error.eq(1), entry.gap.eq(1)]
        with m.Elif(armed & gap_due):
            m.d.comb += [push.eq(1), entry.gap.eq(1)]
            m.d.sync += armed.eq(0)
        m.d.comb += [fifo.w_data.eq(entry), fifo.w_en.eq(push)]
        with m.If(push):
            m.d.sync += lost.eq(~fifo.w_rdy)

        # the FIFO's block-RAM output through a register: straight into the decoder's
        # compares and FSM it was the iCE40 critical path (26.6 ns)
        rxq = stream.Signature(rx_event_layout).create()
        m.d.comb += [rxq.valid.eq(fifo.r_rdy), rxq.payload.eq(fifo.r_data),
                     fifo.r_en.eq(rxq.ready)]
        register_stream(m, "rxq", rxq, dec.i)
        wiring.connect(m, dec.o, eng.event)
        # registered: the engine's IDLE state takes the event, and the LED logic is far
        m.d.sync += self.error.eq(dec.o.valid & dec.o.ready & (dec.o.payload.reason != 0))
        m.d.comb += [rd.addr.eq(eng.rd_addr), eng.rd_data.eq(rd.data),
                     wr.en.eq(dec.wr_en | eng.wr_en),
                     wr.addr.eq(Mux(eng.wr_en, eng.wr_addr, dec.wr_addr)),
                     wr.data.eq(Mux(eng.wr_en, eng.wr_data, dec.wr_data))]
        # the engine's and the encoder's handshakes through registers: in one cycle, the
        # engine's state reached the encoder's (its header and byte ready) and came back
        # to the engine's next-state logic, the iCE40 critical path once the accelerator's
        # own paths were cut (27 ns, seven LUTs)
        register_stream(m, "h", eng.h, enc.h)
        register_stream(m, "tx", eng.tx, enc.i)
        wiring.connect(m, enc.o, utx.i)
        wiring.connect(m, wiring.flipped(self.accel), eng.accel)
        m.d.comb += self.accel_reset.eq(eng.accel_reset)
        return m
