"""systolic.golden: the quantized network itself, bit-exact in NumPy.

This is the ground floor (DESIGN.md section 1): it never imports amaranth, and every floor
above reads its definitions (number formats, rounding, the stochastic-rounding generator,
lookup tables) from here instead of restating them.
"""
