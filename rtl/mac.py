"""Multipliers for the processing elements: inferred, LUT-only, and packed iCE40 SB_MAC16.

Every kind computes exact signed products with the same timing, so a processing element
does not know which one it uses: operands presented in a cycle with ``en`` high are
registered at that clock edge, and their product appears on ``p`` after the next enabled
edge (latency 2 enabled cycles, one product per lane per enabled cycle).

``"inferred"``
    ``a * b`` between an input and an output register; yosys maps it to a DSP block
    where there is one (``synth_ice40 -dsp``, ECP5 MULT18X18D) and to LUTs otherwise.
    On an ECP5 platform the MULT18X18D is instantiated with both registers inside it
    (yosys would map the product alone, the registers left in the fabric).
``"lut"``
    Explicit shift-and-add partial products (``b[i] ? a << i : 0``, the sign bit's term
    subtracted), summed in a balanced tree.  Yosys sees multiplexers and adders, never a
    ``$mul`` cell, so it cannot map them to a DSP: LUT-only builds keep the DSPs free.
``"sb_mac16"``
    Two 8x8 signed products per iCE40 UltraPlus SB_MAC16 in its dual 8x8 mode (lanes
    ``2k`` and ``2k+1`` share DSP ``k``).  On an iCE40 platform the primitive is
    instantiated; elsewhere :class:`Dual8x8` elaborates to an Amaranth model of the same
    configuration, cycle for cycle (tests/rtl/test_mac.py simulates both under Verilator
    with yosys's ``ice40/cells_sim.v``).

The SB_MAC16 configuration is the iCE40 Technology Library's "8x8 multiplier, all
pipelined" mode (configuration word ``001_0000010_0000010_0111_0110``, here with
``A_SIGNED = B_SIGNED = 1``): input registers A and B, the 8x8 product registers F (top)
and G (bottom), ``O = {F, G}`` (yosys ``techlibs/ice40/cells_sim.v``).  Registering inside
the DSP on both sides keeps the multiplier array between two DSP registers, so the only
fabric paths are routing into the A/B registers and out of F/G, which nextpnr times;
the internal path is Lattice's characterized pipelined mode (iCEcube2 only documents
timing for a fixed set of modes, yosys issue #2379).  In this mode an 8-bit signed
product is exact in 16 bits (``(-128)**2 = 2**14``).

Build caveat: yosys's ``synth_ice40 -dsp`` (pass ``ice40_dsp``) treats every SB_MAC16,
an explicit one included, as a 16x16 multiplier and rewrites its configuration
(``MODE_8x8 = 0``, registers off), breaking the packed products.  Designs with
``"sb_mac16"`` are synthesized without ``-dsp`` (Amaranth's default); ``"inferred"``
needs ``-dsp`` to use DSPs at all (tests/rtl/test_mac.py checks both).
"""

from amaranth.hdl import ClockSignal, Const, Instance, Module, Mux, Signal, Value, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from systolic.golden.errors import ConstraintError
from systolic.golden.qformat import MAX_WIDTH, MIN_WIDTH

from ._params import check_int

__all__ = ["MULTIPLIERS", "SB_MAC16_DUAL_8X8", "Dual8x8", "Multiplier", "check_multiplier",
           "is_ecp5", "is_ice40"]

#: Multiplier implementations, by name.
MULTIPLIERS = ("inferred", "lut", "sb_mac16")

#: Widest operand the packed SB_MAC16 multiplier takes (its 8x8 halves).
SB_MAC16_MAX_WIDTH = 8

#: Parameters of the SB_MAC16 dual 8x8 configuration: ``name: (value, width)``.
SB_MAC16_DUAL_8X8 = {
    "NEG_TRIGGER": (0, 1),
    "C_REG": (0, 1), "A_REG": (1, 1), "B_REG": (1, 1), "D_REG": (0, 1),
    "TOP_8x8_MULT_REG": (1, 1), "BOT_8x8_MULT_REG": (1, 1),
    "PIPELINE_16x16_MULT_REG1": (1, 1), "PIPELINE_16x16_MULT_REG2": (0, 1),
    "TOPOUTPUT_SELECT": (2, 2), "TOPADDSUB_LOWERINPUT": (0, 2),
    "TOPADDSUB_UPPERINPUT": (0, 1), "TOPADDSUB_CARRYSELECT": (0, 2),
    "BOTOUTPUT_SELECT": (2, 2), "BOTADDSUB_LOWERINPUT": (0, 2),
    "BOTADDSUB_UPPERINPUT": (0, 1), "BOTADDSUB_CARRYSELECT": (0, 2),
    "MODE_8x8": (1, 1), "A_SIGNED": (1, 1), "B_SIGNED": (1, 1),
}


def _operand_width(name, value):
    check_int(name, value)
    if not MIN_WIDTH <= value <= MAX_WIDTH:
        raise ValueError(f"{name} must be between {MIN_WIDTH} and {MAX_WIDTH}, not {value}")
    return value


def _choice(name, value, choices):
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, not {value!r}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, "
                         f"not {value!r}")
    return value


def check_multiplier(kind, a_width, b_width, *, names=("Operand a", "Operand b")):
    """Validate a multiplier kind for operands of the given (already valid) widths.

    Raises
    ------
    TypeError
        ``kind`` is not a string.
    ValueError
        ``kind`` is unknown, or ``"sb_mac16"`` with a width over 8.
    """
    _choice("Multiplier", kind, MULTIPLIERS)
    if kind == "sb_mac16":
        for name, w in zip(names, (a_width, b_width)):
            if w > SB_MAC16_MAX_WIDTH:
                raise ValueError(
                    f"The sb_mac16 multiplier packs two 8x8 products per DSP; {name} width "
                    f"must be at most {SB_MAC16_MAX_WIDTH}, not {w}")


def is_ice40(platform):
    """Whether ``platform`` is an Amaranth iCE40 platform (the SB_MAC16 primitive's home)."""
    if platform is None:
        return False
    from amaranth.vendor import SiliconBluePlatform
    return isinstance(platform, SiliconBluePlatform)


def is_ecp5(platform):
    """Whether ``platform`` is an Amaranth Lattice ECP5 platform (MULT18X18D, DP16KD)."""
    return getattr(platform, "family", None) == "ecp5"


def _check_sb_mac16_device(platform):
    device = getattr(platform, "device", "")
    if not device.startswith("iCE40UP"):
        raise ConstraintError(f"Device {device} has no SB_MAC16 DSP blocks (only iCE40 "
                              f"UltraPlus devices do); use multiplier 'inferred' or 'lut'")


class Dual8x8(wiring.Component):
    """One SB_MAC16 in its dual 8x8 signed mode: two independent products per cycle.

    Members
    -------
    en : In(1)
        Clock enable (the SB_MAC16's ``CE``).
    a, b : In(ArrayLayout(signed(8), 2))
        Operands of lane 0 (the DSP's bottom half: ``A[7:0] x B[7:0]``) and lane 1 (top:
        ``A[15:8] x B[15:8]``), registered at the enabled edge (``A_REG``, ``B_REG``).
    p : Out(ArrayLayout(signed(16), 2))
        Products, registered (``BOT_8x8_MULT_REG``, ``TOP_8x8_MULT_REG``): ``O[15:0]`` and
        ``O[31:16]``.

    Latency 2 enabled cycles, two products per enabled cycle.  ``elaborate`` instantiates
    ``SB_MAC16`` on an iCE40 platform (raising :class:`ConstraintError` on a device
    without DSPs) and an Amaranth model of the same registers otherwise.  The internal
    registers have no reset, as in the primitive (IRSTTOP/IRSTBOT tied low).
    """

    en: In(1)
    a: In(data.ArrayLayout(signed(8), 2))
    b: In(data.ArrayLayout(signed(8), 2))
    p: Out(data.ArrayLayout(signed(16), 2))

    def elaborate(self, platform):
        if is_ice40(platform):
            _check_sb_mac16_device(platform)
        m = Module()
        if is_ice40(platform):
            o = Signal(32)
            params = {f"p_{name}": Const(value, width)
                      for name, (value, width) in SB_MAC16_DUAL_8X8.items()}
            zero16 = Const(0, 16)
            m.submodules.mac = Instance(
                "SB_MAC16", **params,
                i_CLK=ClockSignal("sync"), i_CE=self.en,
                # A = {lane 1, lane 0}, B likewise: the top/bottom 8x8 multipliers.
                i_A=self.a.as_value(), i_B=self.b.as_value(), i_C=zero16, i_D=zero16,
                i_AHOLD=0, i_BHOLD=0, i_CHOLD=0, i_DHOLD=0,
                i_IRSTTOP=0, i_IRSTBOT=0, i_ORSTTOP=0, i_ORSTBOT=0,
                i_OLOADTOP=0, i_OLOADBOT=0, i_ADDSUBTOP=0, i_ADDSUBBOT=0,
                i_OHOLDTOP=0, i_OHOLDBOT=0, i_CI=0, i_ACCUMCI=0, i_SIGNEXTIN=0,
                o_O=o)
            m.d.comb += self.p.as_value().eq(o)
        else:
            # The model: the same registers as the primitive in this configuration
            # (cells_sim.v: rA/rB, then rG = sext(A[7:0]) * sext(B[7:0]) and
            # rF = sext(A[15:8]) * sext(B[15:8]), each truncated to 16 bits, which is exact
            # for 8-bit signed operands).
            ra = Signal(data.ArrayLayout(signed(8), 2), reset_less=True)
            rb = Signal(data.ArrayLayout(signed(8), 2), reset_less=True)
            rp = Signal(data.ArrayLayout(signed(16), 2), reset_less=True)
            with m.If(self.en):
                m.d.sync += [ra.eq(self.a), rb.eq(self.b)]
                m.d.sync += [rp[k].eq(ra[k] * rb[k]) for k in range(2)]
            m.d.comb += self.p.eq(rp)
        return m


class Multiplier(wiring.Component):
    """``lanes`` independent exact signed products, with registered inputs and outputs.

    Parameters
    ----------
    kind : str
        One of :data:`MULTIPLIERS`.
    a_width : int
        Width of the signed operand ``a``, 2..16 (2..8 with ``"sb_mac16"``).
    b_width : int
        Width of the signed operand ``b``, 2..16 (2..8 with ``"sb_mac16"``).
    lanes : int
        Number of independent products.  ``"sb_mac16"`` uses ``ceil(lanes / 2)`` DSPs.

    Members
    -------
    en : In(1)
        Clock enable of every register.
    a : In(ArrayLayout(signed(a_width), lanes))
    b : In(ArrayLayout(signed(b_width), lanes))
        Operands, registered at each enabled edge.
    p : Out(ArrayLayout(signed(a_width + b_width), lanes))
        ``p[k] = a[k] * b[k]``, exact, :attr:`latency` enabled edges after the operands.

    Raises
    ------
    TypeError
        A width or lane count that is not a positive integer, or a kind that is not a
        string.
    ValueError
        An unknown kind, a width outside 2..16, or a width over 8 with ``"sb_mac16"``.

    Latency 2 enabled cycles (input register, product register) for every kind;
    throughput one product per lane per enabled cycle.
    """

    latency = 2

    def __init__(self, *, kind, a_width, b_width, lanes=1):
        _operand_width("Operand a width", a_width)
        _operand_width("Operand b width", b_width)
        check_multiplier(kind, a_width, b_width)
        check_int("Multiplier lanes", lanes)
        self._kind = kind
        self._a_width = a_width
        self._b_width = b_width
        self._lanes = lanes
        super().__init__({
            "en": In(1),
            "a": In(data.ArrayLayout(signed(a_width), lanes)),
            "b": In(data.ArrayLayout(signed(b_width), lanes)),
            "p": Out(data.ArrayLayout(signed(a_width + b_width), lanes)),
        })

    kind = property(lambda self: self._kind)
    a_width = property(lambda self: self._a_width)
    b_width = property(lambda self: self._b_width)
    lanes = property(lambda self: self._lanes)

    @property
    def dsp_count(self):
        """SB_MAC16 blocks used (0 unless ``kind == "sb_mac16"``)."""
        return (self._lanes + 1) // 2 if self._kind == "sb_mac16" else 0

    def elaborate(self, platform):
        m = Module()
        if self._kind == "sb_mac16":
            for d in range(self.dsp_count):
                mac = m.submodules[f"dsp{d}"] = Dual8x8()
                m.d.comb += mac.en.eq(self.en)
                for half in range(2):
                    lane = 2 * d + half
                    if lane < self._lanes:
                        # sign-extend narrower operands into the 8-bit halves
                        m.d.comb += [mac.a[half].eq(self.a[lane]),
                                     mac.b[half].eq(self.b[lane]),
                                     self.p[lane].eq(mac.p[half])]
            return m
        if self._kind == "inferred" and is_ecp5(platform):
            for k in range(self._lanes):
                self._mult18x18d(m, k)
            return m

        ra = Signal.like(self.a, reset_less=True)
        rb = Signal.like(self.b, reset_less=True)
        rp = Signal.like(self.p, reset_less=True)
        with m.If(self.en):
            m.d.sync += [ra.eq(self.a), rb.eq(self.b)]
            for k in range(self._lanes):
                if self._kind == "inferred":
                    product = ra[k] * rb[k]
                else:
                    product = _shift_add(ra[k], rb[k], self._a_width, self._b_width)
                m.d.sync += rp[k].eq(product)
        m.d.comb += self.p.eq(rp)
        return m


    def _mult18x18d(self, m, k):
        """Lane ``k`` on an ECP5 MULT18X18D with its input and output registers on
        (clock enable ``en``): the same two registers as the portable form, inside the
        DSP.  Yosys maps ``*`` to a MULT18X18D with every register off, so the fabric
        registers around it paid the routing into and out of the DSP block (2.8 + 2.7 ns of
        a 9.9 ns path in the ULX3S-25F build); nextpnr times the DSP's registers (setup
        0.08 ns, clock-to-output 0.74 ns)."""
        a18, b18, p36 = Signal(signed(18)), Signal(signed(18)), Signal(signed(36))
        m.d.comb += [a18.eq(self.a[k]), b18.eq(self.b[k]),
                     self.p[k].eq(p36[:self._a_width + self._b_width])]
        m.submodules[f"mult{k}"] = Instance(
            "MULT18X18D",
            p_REG_INPUTA_CLK="CLK0", p_REG_INPUTA_CE="CE0", p_REG_INPUTA_RST="RST0",
            p_REG_INPUTB_CLK="CLK0", p_REG_INPUTB_CE="CE0", p_REG_INPUTB_RST="RST0",
            p_REG_INPUTC_CLK="NONE", p_REG_PIPELINE_CLK="NONE",
            p_REG_OUTPUT_CLK="CLK0", p_REG_OUTPUT_CE="CE0", p_REG_OUTPUT_RST="RST0",
            p_GSR="DISABLED", p_RESETMODE="SYNC",
            i_CLK0=ClockSignal("sync"), i_CE0=self.en, i_RST0=0,
            i_SIGNEDA=1, i_SIGNEDB=1, i_SOURCEA=0, i_SOURCEB=0,
            **{f"i_A{i}": a18[i] for i in range(18)},
            **{f"i_B{i}": b18[i] for i in range(18)},
            **{f"i_C{i}": 0 for i in range(18)},
            **{f"o_P{i}": p36[i] for i in range(36)},
        )


def _shift_add(a, b, a_width, b_width):
    """``a * b`` as a sum of shifted, gated copies of the wider operand (no ``$mul``).

    ``b = -b[n-1] 2**(n-1) + sum_i b[i] 2**i``, so the partial product of the sign bit is
    subtracted.  The narrower operand selects, so there are ``min(a_width, b_width)``
    partial products, added in a balanced tree (depth ``ceil(log2 n)`` adders)."""
    if b_width > a_width:
        a, b, a_width, b_width = b, a, b_width, a_width
    a, b = Value.cast(a), Value.cast(b)
    n = b_width
    terms = [Mux(b[i], a, 0) << i for i in range(n - 1)]
    terms.append(-(Mux(b[n - 1], a, 0) << (n - 1)))
    while len(terms) > 1:
        terms = [terms[k] + terms[k + 1] if k + 1 < len(terms) else terms[k]
                 for k in range(0, len(terms), 2)]
    return terms[0]
