"""A board session from the host: check the board, load weights, run images, compare.

:func:`run_images` is what ``systolic run`` does on any port (a real board's UART, or
``socket://`` to a :class:`~.virtual.VirtualBoard`): it checks that the device's
descriptor is the one the host's network and array make, loads the weights when the
design keeps them in SPRAM (which a bitstream cannot initialize), runs the images in
batches of ``C`` (one per array column) through :meth:`~.link.Link.infer`, and compares
every output with the golden model and every counter with its prediction: ``cycles`` and
``layer_cycles`` with the compiler's cycle model, ``beats`` with the program's tiles,
``saturations`` with the golden model's saturation events of the batch.
"""

import time
from dataclasses import dataclass, field

import numpy as np

from systolic.golden.run import run as golden_run

from .link import Descriptor, LinkError

__all__ = ["DescriptorMismatch", "check_descriptor", "ImageResult", "BatchCheck",
           "BoardRun", "run_images"]


class DescriptorMismatch(LinkError):
    """The device is built for another network or array than the host expects."""


_FIELDS = (("rows", "array rows"), ("cols", "array columns"),
           ("act_width", "activation width"), ("input_words", "input words"),
           ("output_words", "output words"), ("weight_addr_width", "weight address width"),
           ("weight_data_width", "weight data width"), ("rounding", "rounding modes"),
           ("seed", "seed"), ("version", "protocol version"))


def check_descriptor(device, expected, network="the network"):
    """Raise :class:`DescriptorMismatch` unless the device's :class:`~.link.Descriptor`
    equals the one the host computed (``expected``) for ``network`` (its name)."""
    if device == expected:
        return
    if device.name_hash != expected.name_hash:
        raise DescriptorMismatch(
            f"The device runs another network (hash {device.name_hash:#010x}, "
            f"{device.rows}x{device.cols} array) than {network} (hash "
            f"{expected.name_hash:#010x}, {expected.rows}x{expected.cols}); program it with "
            f"{network}'s bitstream, or name the device's network (--network)")
    diffs = [f"{what} {getattr(device, f)} (expected {getattr(expected, f)})"
             for f, what in _FIELDS if getattr(device, f) != getattr(expected, f)]
    raise DescriptorMismatch(
        f"The device's accelerator for {network} differs from the host's: "
        f"{', '.join(diffs)}; check the board and preset (--board)")


@dataclass(frozen=True)
class ImageResult:
    """One image: ``label`` (or -1), the board's and the golden model's predictions, and
    whether every output element is bit-exact (``differ``: elements that are not)."""
    index: int
    label: int
    predicted: int
    golden: int
    exact: bool
    differ: int


@dataclass(frozen=True)
class BatchCheck:
    """One run of the accelerator: its counters and their predictions."""
    index: int
    images: int
    counters: object
    predicted_cycles: int
    predicted_layer_cycles: tuple
    predicted_beats: int
    golden_saturations: tuple
    seconds: float

    @property
    def counters_exact(self):
        c = self.counters
        return (c.cycles == self.predicted_cycles
                and tuple(c.layer_cycles) == self.predicted_layer_cycles
                and c.beats == self.predicted_beats
                and tuple(c.saturations) == self.golden_saturations)


@dataclass(frozen=True)
class BoardRun:
    """What :func:`run_images` found.

    Members
    -------
    program : Program
    outputs : ndarray, shape (N, output_words)
    golden : ndarray, shape (N, output_words)
    images : tuple of ImageResult
    batches : tuple of BatchCheck
    weights_loaded : int
        Weight beats sent (0 if the design's weights are in the bitstream).
    weight_seconds, run_seconds : float
        Wall time of the weight load and of the runs.
    link_stats : dict
        The link's retransmission statistics.
    """
    program: object
    outputs: np.ndarray = field(repr=False)
    golden: np.ndarray = field(repr=False)
    images: tuple = ()
    batches: tuple = ()
    weights_loaded: int = 0
    weight_seconds: float = 0.0
    run_seconds: float = 0.0
    link_stats: dict = field(default_factory=dict)

    @property
    def bit_exact(self):
        return sum(r.exact for r in self.images)

    @property
    def counters_exact(self):
        return all(b.counters_exact for b in self.batches)

    @property
    def ok(self):
        return self.bit_exact == len(self.images) and self.counters_exact

    def accuracy(self):
        """Fraction of labelled images the board classifies right (None without labels)."""
        labelled = [r for r in self.images if r.label >= 0]
        if not labelled:
            return None
        return sum(r.predicted == r.label for r in labelled) / len(labelled)

    def golden_accuracy(self):
        labelled = [r for r in self.images if r.label >= 0]
        if not labelled:
            return None
        return sum(r.golden == r.label for r in labelled) / len(labelled)

    @property
    def cycles_per_batch(self):
        """The accelerator's measured compute cycles of one run (the first batch's)."""
        return self.batches[0].counters.cycles

    @property
    def cycles_per_inference(self):
        """Measured compute cycles per image slot: a run's cycles over ``C``."""
        return self.cycles_per_batch / self.program.config.cols

    def inferences_per_second(self, clock_hz):
        """Images per second the accelerator computes at ``clock_hz`` (compute only)."""
        return clock_hz / self.cycles_per_inference


def run_images(link, program, images, labels=None, *, load_weights=None, progress=None,
               run_timeout=60.0, network_name=None):
    """Run ``images`` on the device behind ``link`` and compare with the golden model.

    Parameters
    ----------
    link : Link
    program : Program
        The network and array the device must be built for.
    images : array_like of int, shape (N, C, H, W)
        Input tensors in the network's input format.
    labels : array_like of int, optional
    load_weights : bool, optional
        Send the network's weights first; default: when the design keeps them in SPRAM.
    progress : callable, optional
        ``progress(stage, done, total)`` with stage ``"weights"`` (beats) or
        ``"images"`` (images, after each batch, with the batch's :class:`ImageResult`
        list as a fourth argument).
    run_timeout : float
        Seconds one run may take.
    network_name : str, optional
        For messages (default the network's name).

    Raises
    ------
    DescriptorMismatch
        The device is built for something else.
    LinkError
        The link failed (after its retries).
    """
    from systolic.rtl.accelerator import weight_beats
    net = program.network
    name = network_name or net.name or "the network"
    x = np.asarray(images)
    n = len(x)
    labels = np.full(n, -1) if labels is None else np.asarray(labels)[:n]
    expected = Descriptor.from_program(program)
    check_descriptor(link.identify(), expected, name)
    if load_weights is None:
        load_weights = program.config.weight_memory == "spram"
    loaded = 0
    start = time.monotonic()
    if load_weights:
        beats = weight_beats(program, net)
        link.reset()
        step = 8 * expected.weight_chunk
        for k in range(0, len(beats), step):
            link.write_weights(beats[k:k + step])
            loaded = min(k + step, len(beats))
            if progress is not None:
                progress("weights", loaded, len(beats))
    weight_seconds = time.monotonic() - start

    C = program.config.cols
    by_layer = [0] * len(net.layers)
    for s in program.steps:
        by_layer[s.layer] += s.cycles
    beats_per_run = program.beats          # either dataflow
    golden = golden_run(net, x)
    outputs = np.zeros_like(golden.logits)
    results, checks = [], []
    start = time.monotonic()
    for b, first in enumerate(range(0, n, C)):
        part = x[first:first + C]
        count = len(part)
        t = time.monotonic()
        out, counters = link.infer(part.reshape(count, -1).tolist(),
                                   run_timeout=run_timeout)
        got = np.array(out[:count], dtype=np.int64)
        outputs[first:first + count] = got
        sat = golden_run(net, part).saturations
        checks.append(BatchCheck(
            index=b, images=count, counters=counters, predicted_cycles=program.cycles,
            predicted_layer_cycles=tuple(by_layer), predicted_beats=beats_per_run,
            golden_saturations=tuple(int(v) for v in sat), seconds=time.monotonic() - t))
        batch = []
        for k in range(count):
            i = first + k
            want = golden.logits[i]
            differ = int(np.count_nonzero(got[k] != want))
            batch.append(ImageResult(index=i, label=int(labels[i]),
                                     predicted=int(np.argmax(got[k])),
                                     golden=int(np.argmax(want)), exact=differ == 0,
                                     differ=differ))
        results += batch
        if progress is not None:
            progress("images", first + count, n, batch)
    return BoardRun(program=program, outputs=outputs, golden=golden.logits,
                    images=tuple(results), batches=tuple(checks), weights_loaded=loaded,
                    weight_seconds=weight_seconds, run_seconds=time.monotonic() - start,
                    link_stats=dict(link.stats))
