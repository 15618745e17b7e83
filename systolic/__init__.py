"""systolic: quantized CNN inference accelerators for small FPGAs.

This package stays light: importing it loads neither amaranth nor cocotb.  The floors are
``systolic.golden`` (the bit-exact NumPy model), ``systolic.rtl``, ``systolic.sim`` and
``systolic.boards``; the command line lives in ``systolic.cli``.
"""

__version__ = "0.1.0"
