"""`systolic run` and `systolic serve`.

`run` is tested here against the link's Python device model (:class:`LinkModel` served on
a socket) with a golden-model accelerator behind it, so that every line of the command is
exercised in a second: a clean run, a device built for another network, a device that
returns one wrong element, a port that cannot be opened, a device that never answers.
`serve` is started as a real process (slow: it simulates the board top under Verilator)
and stopped with SIGINT.  The virtual board's own checks (bit-exact images, fault
injection through the gateware) are in tests/boards/test_virtual.py.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import serial

from systolic.boards.link import Descriptor, Link
from systolic.boards.linkmodel import LinkModel, ModelServer
from systolic.boards.targets import board
from systolic.cli import main
from systolic.golden import models
from systolic.golden.rounding import ROUNDING_MODES
from systolic.golden.run import run as golden_run
from systolic.rtl.accelerator import weight_beats
from systolic.rtl.compiler import compile_network


class GoldenDevice:
    """A device model (:mod:`systolic.boards.linkmodel`) whose accelerator is the golden
    model: its weight memory starts empty (SPRAM) and outputs are the golden model's only
    if the written weights are the network's (else zeros); counters are the compiler's
    predictions and the golden saturations.  ``corrupt`` adds 1 to one output element."""

    def __init__(self, program, corrupt=None):
        self.program = program
        self.d = Descriptor.from_program(program)
        self.want = {(b["bias"], b["addr"]): b["data"]
                     for b in weight_beats(program, program.network)}
        self.memory = {}
        self.corrupt = corrupt
        self.reset()

    def reset(self):
        self._x = []
        self._counters = [0] * self.d.counter_words

    def set_registers(self, rounding, seed, images):
        self.rounding, self.seed, self.images = tuple(rounding), seed, images

    def write(self, bias, addr, data):
        self.memory[bias, addr] = data

    def put(self, values):
        self._x.append(list(values))
        if len(self._x) < self.d.input_words:
            return []
        x, self._x = np.array(self._x).T, []
        net, p = self.program.network, self.program
        x = x[:self.images].reshape(self.images, *net.input_shape)
        modes = [ROUNDING_MODES[r] for r in self.rounding]
        g = golden_run(net, x, rounding=modes, seed=self.seed)
        out = np.zeros((self.d.cols, self.d.output_words), dtype=np.int64)
        if self.memory == self.want:
            out[:self.images] = g.logits
        if self.corrupt is not None:
            out[self.corrupt] += 1
        by_layer = [0] * len(net.layers)
        for s in p.steps:
            by_layer[s.layer] += s.cycles
        beats = sum(s.tiles * s.reduction for s in p.steps if s.kind == "matmul")
        self._counters = [p.cycles, beats, *by_layer, *map(int, g.saturations)]
        return [list(out[:, e]) for e in range(self.d.output_words)]

    def counters(self):
        return list(self._counters)


@pytest.fixture(scope="module")
def tiny():
    return compile_network(models.load("mnist-tiny"), board("icebreaker").preset())


def serve_model(program, **kwargs):
    return ModelServer(LinkModel(Descriptor.from_program(program),
                                 GoldenDevice(program, **kwargs)), gap=0.5)


def test_run_against_device_model(tiny, capsys):
    with serve_model(tiny) as server:
        status = main(["run", "--port", f"socket://127.0.0.1:{server.port}", "--network",
                       "mnist-tiny", "--images", "3"])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert re.search(r"image    0: label \d, board \d (right|wrong), golden \d: pass "
                     r"\(bit-exact\)", out)
    assert "bit-exact:         3/3 images" in out
    assert "counters:          cycles, layer cycles, beats and saturations of 2 runs: exact" \
        in out
    assert f"cycles per run:    {tiny.cycles:,} measured on the board, {tiny.cycles:,} " \
        f"compiler model (2 images per run)" in out
    assert "inferences/s at 39.75 MHz (compute only)" in out
    beats = len(weight_beats(tiny, tiny.network))
    assert f"weights {beats}/{beats} beats" in err and "3/3 images" in err


def test_run_reports_a_wrong_element(tiny, capsys):
    with serve_model(tiny, corrupt=(1, 4)) as server:
        status = main(["run", "--port", f"socket://127.0.0.1:{server.port}", "--network",
                       "mnist-tiny", "--images", "2"])
    out, err = capsys.readouterr()
    assert status == 1
    assert "image    0: " in out and ": pass (bit-exact)" in out
    assert "image    1: " in out and ": FAIL (MISMATCH (1 outputs differ))" in out
    assert "bit-exact:         1/2 images" in out
    assert err.strip().splitlines()[-1] == ("systolic: error: 1 of 2 images differ from the "
                                            "golden model")


def test_run_rejects_a_device_for_another_network(tiny, capsys):
    with serve_model(tiny) as server:
        status = main(["run", "--port", f"socket://127.0.0.1:{server.port}", "--network",
                       "lenet5", "--images", "1"])
    err = capsys.readouterr().err
    assert status == 1
    lines = err.strip().splitlines()
    assert lines[-1].startswith("systolic: error: The device runs another network (hash ")
    assert "than lenet5 (hash" in lines[-1] and "--network" in lines[-1]
    assert not any("Traceback" in line for line in lines)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("port, message", [
    (lambda: f"socket://127.0.0.1:{free_port()}", "Cannot open port socket://127.0.0.1:"),
    (lambda: "/dev/ttyNOSUCHPORT", "Cannot open port /dev/ttyNOSUCHPORT"),
], ids=["refused", "no-device"])
def test_run_port_cannot_open(port, message, capsys):
    assert main(["run", "--port", port(), "--network", "mnist-tiny", "--images", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"systolic: error: {message}")
    assert len(err.strip().splitlines()) == 1, err


def test_run_device_never_answers(capsys):
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        start = time.monotonic()
        status = main(["run", "--port", f"socket://127.0.0.1:{port}", "--network",
                       "mnist-tiny", "--images", "1", "--timeout", "0.1", "--retries", "2"])
        took = time.monotonic() - start
    err = capsys.readouterr().err
    assert status == 1 and took < 5
    assert err.strip() == ("systolic: error: No valid response to PING (seq 0) after 3 "
                           "transmissions: 3 x timeout")


@pytest.mark.parametrize("argv, message", [
    (["run", "--port", "loop://", "--images", "0"], "--images must be between 1 and 1000"),
    (["run", "--port", "loop://", "--board", "nope"], "Unknown board 'nope'"),
    (["serve", "--listen", "7000"], "--listen must be HOST:PORT, not '7000'"),
    (["serve", "--board", "icebreaker", "--preset", "huge"],
     "Board icebreaker has no preset 'huge'"),
], ids=["images", "board", "listen", "preset"])
def test_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1, err


def test_serve_address_in_use(capsys):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["serve", "--listen", f"127.0.0.1:{port}"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"systolic: error: Cannot listen on 127.0.0.1:{port}: Address " \
        f"already in use"


@pytest.mark.slow
def test_serve_process_answers_and_stops_on_sigint():
    """`systolic serve` as a process: it says where it listens, answers PING with the
    board's descriptor, logs the client, and SIGINT (Ctrl-C) stops it with status 0."""
    target = board("icebreaker")
    program = compile_network(models.load(target.default_network), target.preset())
    port = free_port()
    # SIGINT back to its default in the child, as a terminal would have it: a runner
    # started in the background of a non-interactive shell ignores SIGINT, every process
    # below it inherits that, and Python then never turns Ctrl-C into KeyboardInterrupt
    proc = subprocess.Popen(
        [sys.executable, "-m", "systolic.cli", "serve", "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    try:
        deadline = time.monotonic() + 900          # a first Verilator build included
        while not any(line.startswith("listening on ") for line in lines):
            assert proc.poll() is None and time.monotonic() < deadline, "\n".join(lines)
            lines.append(proc.stdout.readline().rstrip("\n"))
        assert f"listening on socket://127.0.0.1:{port} " in lines[-1]
        with serial.serial_for_url(f"socket://127.0.0.1:{port}") as s:
            assert Link(s, timeout=5.0).identify() == Descriptor.from_program(program)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = "\n".join(lines) + "\n" + out
    assert proc.returncode == 0, log
    assert re.search(r"client 127\.0\.0\.1:\d+ connected", log)
    assert re.search(r"client 127\.0\.0\.1:\d+ disconnected after [\d.]+ s: [\d,]+ bytes "
                     r"in, [\d,]+ out", log), log
    assert "stopping" in log and "Traceback" not in log
