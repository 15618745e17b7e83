"""Errors shared by every floor of systolic.

They live on the ground floor so that ``systolic.rtl``, ``systolic.sim`` and
``systolic.boards`` can raise and catch the same classes the golden model does.
"""

__all__ = ["SystolicError", "NetworkError", "NetworkFileError", "ConstraintError"]


class SystolicError(Exception):
    """Base class of every error that systolic reports to a user as one line."""


class NetworkError(SystolicError, ValueError):
    """A network is not valid: a layer or field breaks a rule of DESIGN.md.

    The message names the layer (index and kind) and the field.
    """


class NetworkFileError(NetworkError):
    """A network file cannot be read: not a network file, truncated, wrong version, or
    its contents describe an invalid network."""


class ConstraintError(SystolicError, ValueError):
    """A request does not fit: an accumulator that could overflow, a network that does not
    fit a device's memories, an array that is too small.  The message names what was asked
    and what is available."""
