"""What several commands share: the quantized network a command runs, and a board's program."""

__all__ = ["quantized_network", "board_program"]


def quantized_network(name):
    """The :class:`~systolic.golden.ir.QNetwork` called ``name`` (a reference network or a
    file); ``ValueError`` if it is a float network."""
    from systolic.golden import models
    from systolic.golden.ir import QNetwork
    net = models.load(name)
    if not isinstance(net, QNetwork):
        raise ValueError(f"{name} is a float network; quantize it first (systolic quantize)")
    return net


def board_program(args):
    """``(target, network name, Program)`` for ``args.board``, ``args.network`` (default:
    the board's network) and ``args.preset``."""
    from systolic.boards.targets import board
    from systolic.rtl.compiler import compile_network
    target = board(args.board)
    name = args.network or target.default_network
    return target, name, compile_network(quantized_network(name), target.preset(args.preset))
