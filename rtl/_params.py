"""Parameter checks shared by the RTL units (STYLE.md rule 3: Amaranth's message form)."""

__all__ = ["check_int"]


def check_int(name, value, lo=1, hi=None):
    """Return ``value`` if it is an integer in ``lo..hi``.

    Raises ``TypeError`` for a wrong type or sign ("Array rows must be a positive integer,
    not 0") and ``ValueError`` for a value beyond the limits ("... must be between 2 and
    16, not 17")."""
    kind = "a non-negative integer" if lo == 0 else "a positive integer"
    if isinstance(value, bool) or not isinstance(value, int) or value < min(lo, 1):
        raise TypeError(f"{name} must be {kind}, not {value!r}")
    if value < lo or (hi is not None and value > hi):
        bounds = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise ValueError(f"{name} must be {bounds}, not {value}")
    return value
