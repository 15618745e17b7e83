"""PLL settings for the board tops: iCE40 SB_PLL40 and ECP5 EHXPLLL dividers in Python.

Both searches enumerate every legal divider setting in the same order as the vendor-neutral
tools ``icepll`` and ``ecppll`` (shipped as ``yowasp-icepll`` / ``yowasp-ecppll``) and keep
the first setting with the smallest frequency error, so they pick the same dividers;
``tests/boards/test_top.py`` compares them with the tools.

iCE40 (Lattice iCE40 sysCLOCK PLL design guide, TN1251), ``FEEDBACK_PATH = "SIMPLE"``::

    F_PFD = F_IN / (DIVR + 1)                   10 .. 133 MHz
    F_VCO = F_PFD * (DIVF + 1)                  533 .. 1066 MHz
    F_OUT = F_VCO / 2**DIVQ                     DIVR 0..15, DIVF 0..127, DIVQ 1..6

ECP5 (Lattice ECP5 sysCLOCK PLL/DLL design guide, FPGA-TN-02200), feedback from CLKOP::

    F_PFD = F_IN / CLKI_DIV                     3.125 .. 400 MHz
    F_OUT = F_PFD * CLKFB_DIV                   CLKI_DIV 1..128, CLKFB_DIV 1..80
    F_VCO = F_OUT * CLKOP_DIV                   400 .. 800 MHz, CLKOP_DIV 1..128

(ecppll, like this search, takes the CLKOP_DIV that puts the VCO nearest 600 MHz.)
"""

from dataclasses import dataclass

__all__ = ["ICE40PLL", "ECP5PLL", "ice40_pll", "ecp5_pll"]


def _check_freq(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise TypeError(f"{name} must be a positive number, not {value!r}")
    return float(value)


@dataclass(frozen=True)
class ICE40PLL:
    """An SB_PLL40 setting (``FEEDBACK_PATH = "SIMPLE"``).

    Members
    -------
    f_in, f_out : float
        Input and achieved output frequency, Hz.
    divr, divf, divq, filter_range : int
        The primitive's parameters.
    """
    f_in: float
    f_out: float
    divr: int
    divf: int
    divq: int
    filter_range: int

    @property
    def f_pfd(self):
        return self.f_in / (self.divr + 1)

    @property
    def f_vco(self):
        return self.f_pfd * (self.divf + 1)


@dataclass(frozen=True)
class ECP5PLL:
    """An EHXPLLL setting with CLKOP as feedback.

    Members
    -------
    f_in, f_out : float
        Input and achieved output frequency, Hz.
    clki_div, clkfb_div, clkop_div, clkop_cphase : int
        The primitive's parameters.
    """
    f_in: float
    f_out: float
    clki_div: int
    clkfb_div: int
    clkop_div: int
    clkop_cphase: int

    @property
    def f_vco(self):
        return self.f_out * self.clkop_div


def _ice40_filter(f_pfd_mhz):
    # icepll's loop-filter table (TN1251, "PLL filter range")
    for limit, code in ((17, 1), (26, 2), (44, 3), (66, 4), (101, 5)):
        if f_pfd_mhz < limit:
            return code
    return 6


def ice40_pll(f_in, f_out):
    """The SB_PLL40 dividers that make ``f_out`` Hz from ``f_in`` Hz most closely.

    Raises
    ------
    TypeError
        A frequency that is not a positive number.
    ValueError
        No setting comes within 5% of ``f_out``.
    """
    fi = _check_freq("PLL input frequency", f_in) / 1e6
    fo = _check_freq("PLL output frequency", f_out) / 1e6
    best = None
    for divr in range(16):
        f_pfd = fi / (divr + 1)
        if not 10 <= f_pfd <= 133:
            continue
        for divf in range(128):
            f_vco = f_pfd * (divf + 1)
            if not 533 <= f_vco <= 1066:
                continue
            for divq in range(1, 7):
                f = f_vco / (1 << divq)
                if best is None or abs(f - fo) < abs(best[0] - fo):
                    best = (f, divr, divf, divq, _ice40_filter(f_pfd))
    return _result(ICE40PLL, fi, fo, best, "iCE40")


def ecp5_pll(f_in, f_out):
    """The EHXPLLL dividers that make ``f_out`` Hz from ``f_in`` Hz most closely.

    Raises
    ------
    TypeError
        A frequency that is not a positive number.
    ValueError
        No setting comes within 5% of ``f_out``.
    """
    fi = _check_freq("PLL input frequency", f_in) / 1e6
    fo = _check_freq("PLL output frequency", f_out) / 1e6
    best = None
    for clki in range(1, 129):
        f_pfd = fi / clki
        if not 3.125 <= f_pfd <= 400:
            continue
        for clkfb in range(1, 81):
            f = f_pfd * clkfb
            # the output divider that puts the VCO nearest the middle of its range
            clkop = min(128, max(1, round(600 / f)))
            if not 400 <= f * clkop <= 800:
                continue
            if best is None or abs(f - fo) < abs(best[0] - fo):
                best = (f, clki, clkfb, clkop, (clkop - 1) // 2)
    return _result(ECP5PLL, fi, fo, best, "ECP5")


def _result(cls, fi, fo, best, family):
    if best is None or abs(best[0] - fo) > 0.05 * fo:
        got = "nothing" if best is None else f"at best {best[0]:.3f} MHz"
        raise ValueError(f"The {family} PLL cannot make {fo:g} MHz from {fi:g} MHz "
                         f"({got})")
    f, *params = best
    return cls(fi * 1e6, f * 1e6, *params)
