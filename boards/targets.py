"""Board targets: which FPGA, which clock, which array fits, checked before synthesis.

A :class:`BoardTarget` names an amaranth-boards platform, its device's resources and the
array configurations (presets) that fit it.  :func:`check_fit` compares a compiled
:class:`~systolic.rtl.compiler.Program` with the device's DSP blocks and memories and
raises :class:`~systolic.golden.errors.ConstraintError` with what is needed and what is
available, before any synthesis runs.

Device figures (block counts, from the vendors' data sheets):

* iCE40 UltraPlus UP5K (iCEBreaker, iCESugar): 5,280 LUT4, 8 SB_MAC16, 30 EBR of 4 kbit
  (256x16, 512x8, 1024x4, 2048x2), 4 SPRAM of 16384 x 16 (Lattice DS1056).
* ECP5 LFE5U-25F / -45F / -85F (ULX3S; ECPIX-5 uses the 5G -45F/-85F): 24k / 44k / 84k
  LUT4, 28 / 72 / 156 MULT18X18D, 56 / 108 / 208 DP16KD of 18 kbit (16,384 data bits
  usable as 16384x1 .. 512x36) (Lattice FPGA-DS-02012).
"""

import dataclasses
from dataclasses import dataclass, field

from systolic.golden.errors import ConstraintError
from systolic.rtl.accelerator import queue_memories
from systolic.rtl.compiler import ArrayConfig
from systolic.rtl.spram import spram_blocks

__all__ = ["Device", "BoardTarget", "BOARDS", "DEFAULT_BOARD", "board", "memory_blocks",
           "estimate", "check_fit"]


@dataclass(frozen=True)
class Device:
    """One FPGA's resources.

    Members
    -------
    name : str
    family : str
        ``"ice40"`` or ``"ecp5"``.
    luts, dsps, brams, sprams : int
        LUT4s, DSP blocks (SB_MAC16 / MULT18X18D), block RAMs, SPRAM blocks.
    bram_shapes : tuple of (depth, width)
        The block RAM's aspect ratios.
    """
    name: str
    family: str
    luts: int
    dsps: int
    brams: int
    sprams: int
    bram_shapes: tuple

    @property
    def bram_bits(self):
        return max(d * w for d, w in self.bram_shapes)


UP5K = Device("iCE40UP5K", "ice40", 5280, 8, 30, 4,
              ((256, 16), (512, 8), (1024, 4), (2048, 2)))
_ECP5_SHAPES = ((512, 36), (1024, 18), (2048, 9), (4096, 4), (8192, 2), (16384, 1))
LFE5U_25F = Device("LFE5U-25F", "ecp5", 24288, 28, 56, 0, _ECP5_SHAPES)
LFE5U_45F = Device("LFE5U-45F", "ecp5", 43848, 72, 108, 0, _ECP5_SHAPES)
LFE5U_85F = Device("LFE5U-85F", "ecp5", 83640, 156, 208, 0, _ECP5_SHAPES)


@dataclass(frozen=True)
class BoardTarget:
    """A board: platform, device, clocks and the array presets that fit.

    Members
    -------
    name : str
    platform : str
        ``module:Class`` of the amaranth-boards platform.
    device : Device
    clock_mhz : float
        The accelerator's target clock (made by a PLL from the board's oscillator).
    presets : dict of str to ArrayConfig
        Named array configurations; ``"default"`` is used unless one is chosen.
    default_network : str
        The reference network the demo builds for this board.
    programmer : str
        The tool amaranth-boards programs the board with.
    baud : int
        The host link's UART rate.  1 Mbaud: the boards' FTDI bridges (FT2232H on the
        iCEBreaker, FT231X on the ULX3S) run it with an exact divisor from 42 and 125 MHz.
    """
    name: str
    platform: str
    device: Device
    clock_mhz: float
    presets: dict = field(default_factory=dict)
    default_network: str = "mnist-tiny"
    programmer: str = ""
    baud: int = 1_000_000

    def preset(self, name="default"):
        try:
            return self.presets[name]
        except KeyError:
            raise ValueError(f"Board {self.name} has no preset {name!r}; it has "
                             f"{', '.join(self.presets)}") from None

    def platform_class(self):
        import importlib
        module, cls = self.platform.split(":")
        return getattr(importlib.import_module(module), cls)


# iCE40: the packed SB_MAC16 gives two 8x8 products per DSP: 8 DSPs -> 16 PEs (8 x 2);
# the weights live in SPRAM (the 30 EBRs hold biases, the two images' activations and the
# output path's queues).  Both presets use the broadcast interconnect (no skew/deskew or
# PE operand registers: the area of a small array).  The default is the 8x2 array ("8x2"
# names it too), all 8 SB_MAC16: lenet5 takes 4,878 of the 5,280 logic cells with the
# link (README, Board builds); "4x2" is half of it (4 SB_MAC16), for a smaller network
# and a faster build.  No stochastic-rounding generator: its key schedule and rounds
# take ~500 LUTs and ~300 flip-flops of the UP5K's 5,280 cells, and the reference
# networks round to nearest even (floor and nearest_even remain run-time choices).
_ICE40_8X2 = ArrayConfig(rows=8, cols=2, multiplier="sb_mac16", weight_memory="spram",
                         stochastic=False, interconnect="broadcast", queue_memory=True)
_ICE40 = {
    "default": _ICE40_8X2,
    "8x2": _ICE40_8X2,
    "4x2": dataclasses.replace(_ICE40_8X2, rows=4),
}

# ECP5 presets, for 125 MHz: the stochastic-rounding generator computes one round per
# pipeline stage (nine stages; three rounds per stage, three 16-bit add-rotate-xor rounds
# in series, were a 10.9 ns path), the memories' read data pass a register before the
# beat's logic (a DP16KD's clock-to-output is 5.8 ns of the 8 ns period), and each
# product one between its DSP block and the accumulator (6.7 ns of routing on the 85F).
def _ecp5(rows, cols):
    return ArrayConfig(rows=rows, cols=cols, rounds_per_stage=1, registered_memories=True,
                       product_register=True)


# The UP5K boards ask for 40 MHz, the target (the PLL's nearest from 12 MHz is
# 39.75 MHz; UART divisor 40, 993,750 baud).
BOARDS = {
    "icebreaker": BoardTarget("icebreaker", "amaranth_boards.icebreaker:ICEBreakerPlatform",
                              UP5K, 40.0, _ICE40, "lenet5", "iceprog"),
    "icesugar": BoardTarget("icesugar", "amaranth_boards.icesugar:ICESugarPlatform",
                            UP5K, 40.0, _ICE40, "lenet5", "icesprog"),
    "ulx3s-25f": BoardTarget("ulx3s-25f", "amaranth_boards.ulx3s:ULX3S_25F_Platform",
                             LFE5U_25F, 125.0,
                             {"default": _ecp5(4, 6), "small": _ecp5(4, 4)},
                             "lenet5", "openFPGALoader"),
    "ulx3s-45f": BoardTarget("ulx3s-45f", "amaranth_boards.ulx3s:ULX3S_45F_Platform",
                             LFE5U_45F, 125.0,
                             {"default": _ecp5(8, 8), "small": _ecp5(4, 4)},
                             "lenet5", "openFPGALoader"),
    "ulx3s-85f": BoardTarget("ulx3s-85f", "amaranth_boards.ulx3s:ULX3S_85F_Platform",
                             LFE5U_85F, 125.0,
                             {"default": _ecp5(16, 8), "8x8": _ecp5(8, 8),
                              "small": _ecp5(4, 4)},
                             "lenet5", "openFPGALoader"),
}
#: The board of ``systolic demo`` and every command's default.
DEFAULT_BOARD = "icebreaker"


def board(name):
    """The :class:`BoardTarget` called ``name``; ``ValueError`` listing the known ones."""
    try:
        return BOARDS[name]
    except KeyError:
        raise ValueError(f"Unknown board {name!r}; known boards: "
                         f"{', '.join(BOARDS)}") from None


def memory_blocks(device, depth, width):
    """Block RAMs one memory of ``depth`` x ``width`` bits takes (best aspect ratio)."""
    return min(-(-width // w) * -(-depth // d) for d, w in device.bram_shapes)


def estimate(program, device):
    """DSP blocks and memories the accelerator for ``program`` takes on ``device``.

    Returns
    -------
    dict
        ``dsps``, ``brams``, ``sprams`` needed, and ``memories``: (what, blocks, kind) for
        each memory.
    """
    cfg = program.config
    R, C = cfg.rows, cfg.cols
    pes = R * C
    dsps = 0
    if cfg.multiplier == "sb_mac16":
        dsps = -(-pes // 2)
    elif cfg.multiplier == "inferred":
        dsps = pes
    memories = []
    wbits = R * program.weight_width
    if cfg.weight_memory == "spram":
        memories.append(("weights", spram_blocks(wbits, program.weight_words), "spram"))
    else:
        memories.append(("weights", memory_blocks(device, program.weight_words, wbits),
                         "bram"))
    memories.append(("biases", memory_blocks(device, program.bias_words,
                                             program.bias_lanes * program.acc_width),
                     "bram"))
    bank = memory_blocks(device, program.act_words, program.act_width)
    memories.append((f"activations ({C} banks)", C * bank, "bram"))
    for what, depth, width in queue_memories(program):
        memories.append((what, memory_blocks(device, depth, width), "bram"))
    return {"dsps": dsps,
            "brams": sum(b for _, b, k in memories if k == "bram"),
            "sprams": sum(b for _, b, k in memories if k == "spram"),
            "memories": memories}


def check_fit(program, target):
    """Raise :class:`ConstraintError` if ``program``'s accelerator cannot fit ``target``.

    The message names the resource, what is needed (with the memories that take it) and
    what the device has."""
    device = target.device if isinstance(target, BoardTarget) else target
    cfg = program.config
    if cfg.multiplier == "sb_mac16" and device.family != "ice40":
        raise ConstraintError(f"Multiplier sb_mac16 is an iCE40 UltraPlus primitive; "
                              f"{device.name} is {device.family}")
    if cfg.weight_memory == "spram" and device.sprams == 0:
        raise ConstraintError(f"Weight memory spram needs iCE40 UltraPlus SPRAM; "
                              f"{device.name} has none")
    need = estimate(program, device)
    where = ", ".join(f"{what} {blocks}" for what, blocks, kind in need["memories"])
    net = program.network.name or "the network"
    if need["dsps"] > device.dsps:
        raise ConstraintError(
            f"{net} on a {cfg.rows}x{cfg.cols} array with {cfg.multiplier} multipliers "
            f"needs {need['dsps']} DSP blocks; {device.name} has {device.dsps}")
    if need["sprams"] > device.sprams:
        raise ConstraintError(
            f"{net} needs {need['sprams']} SPRAM blocks ({where}); {device.name} has "
            f"{device.sprams}")
    if need["brams"] > device.brams:
        raise ConstraintError(
            f"{net} needs {need['brams']} block RAMs ({where}; {program.weight_bits:,} "
            f"weight bits, {program.act_bits:,} activation bits); {device.name} has "
            f"{device.brams}")
    return need
