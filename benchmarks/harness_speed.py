"""Harness speed: simulated cycles per second of one ``lenet5`` batch in the cocotb harness
(:mod:`systolic.sim.accel`) against the same Verilated model driven by a bare C++ loop.

::

    python benchmarks/harness_speed.py                 # lenet5 on 8x8, 5 batches each way
    python benchmarks/harness_speed.py --layers        # the layer-check build and bench
    python benchmarks/harness_speed.py --public-flat-rw    # cocotb's own build flags

The harness runs ``--batches`` batches of the first ``C`` held-out MNIST images in one
simulator process; its rate is a batch's simulated cycles (input load, compute, output)
over the wall time the bench measured for that batch (median over the batches).  Process
start-up, which a run pays once, is printed apart.

The bare loop is the *same model*: the harness's cached build folder is copied, a small
C++ ``main`` (written here) is compiled with the same compiler flags, and linked against the
same ``Vtop__ALL.a`` and Verilator run-time objects.  It resets the design, sets the
run-time registers, feeds the same input beats one per cycle, toggles ``clk`` with two
``eval()`` per cycle (as the harness's GPI clock does), waits for ``o.valid``, reads the
outputs, and repeats; its outputs and cycle counter are checked against the golden model
and the compiler too, so both sides are known to do the whole job.  Its rate is the same
span's cycles over ``std::chrono::steady_clock`` time (median over the repeats).

The ratio harness / bare loop is the figure of merit (target >= 0.5).
"""

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DRIVER = r"""// Bare Verilator loop for benchmarks/harness_speed.py (generated; see there).
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "Vtop.h"
#include "verilated.h"

static void put(CData& p, const uint32_t* w) { p = (CData)w[0]; }
static void put(SData& p, const uint32_t* w) { p = (SData)w[0]; }
static void put(IData& p, const uint32_t* w) { p = w[0]; }
static void put(QData& p, const uint32_t* w) { p = (QData)w[0] | ((QData)w[1] << 32); }
template <std::size_t N> static void put(VlWide<N>& p, const uint32_t* w) {
    for (std::size_t k = 0; k < N; ++k) p[k] = w[k];
}
static void get(const CData& p, std::vector<uint32_t>& w) { w.push_back(p); }
static void get(const SData& p, std::vector<uint32_t>& w) { w.push_back(p); }
static void get(const IData& p, std::vector<uint32_t>& w) { w.push_back(p); }
static void get(const QData& p, std::vector<uint32_t>& w) {
    w.push_back((uint32_t)p); w.push_back((uint32_t)(p >> 32));
}
template <std::size_t N> static void get(const VlWide<N>& p, std::vector<uint32_t>& w) {
    for (std::size_t k = 0; k < N; ++k) w.push_back(p[k]);
}

static Vtop* top;
static uint64_t cycles = 0;

static inline void tick() {
    top->clk = 1;
    top->eval();
    top->clk = 0;
    top->eval();
    ++cycles;
}

int main(int argc, char** argv) {
    if (argc < 3) { std::fprintf(stderr, "usage: bench settings.bin repeats\n"); return 2; }
    FILE* f = std::fopen(argv[1], "rb");
    if (!f) { std::perror(argv[1]); return 2; }
    uint32_t head[4];  // words per input beat, beats, rounding words, words per output beat
    if (std::fread(head, 4, 4, f) != 4) return 2;
    std::vector<uint32_t> rounding(head[2]), scalars(2), beats((size_t)head[0] * head[1]);
    if (std::fread(rounding.data(), 4, head[2], f) != head[2]) return 2;
    if (std::fread(scalars.data(), 4, 2, f) != 2) return 2;
    if (std::fread(beats.data(), 4, beats.size(), f) != beats.size()) return 2;
    std::fclose(f);
    const int repeats = std::atoi(argv[2]);
    const uint32_t words_out = head[3];

    Verilated::commandArgs(argc, argv);
    top = new Vtop;
    top->clk = 0;
    top->rst = 1;
    top->i__valid = 0;
    top->o__ready = 0;
    top->w__valid = 0;
    top->eval();
    for (int k = 0; k < 3; ++k) tick();
    top->rst = 0;
    tick();
    put(top->rounding, rounding.data());
    top->seed = scalars[0];
    top->images = scalars[1];

    for (int r = 0; r < repeats; ++r) {
        const uint64_t start_cycles = cycles;
        const auto start = std::chrono::steady_clock::now();
        for (uint32_t e = 0; e < head[1];) {              // load, one beat per cycle
            put(top->i__payload, &beats[(size_t)e * head[0]]);
            top->i__valid = 1;
            top->eval();
            const bool taken = top->i__ready;
            tick();
            if (taken) ++e;
        }
        top->i__valid = 0;
        uint64_t compute = 0;
        while (!top->o__valid) { tick(); ++compute; }      // the design runs free
        std::vector<uint32_t> out;
        top->o__ready = 1;
        for (uint32_t e = 0; e < words_out;) {             // outputs
            top->eval();
            if (top->o__valid) { get(top->o__payload, out); ++e; }
            tick();
        }
        top->o__ready = 0;
        tick();
        const double seconds = std::chrono::duration<double>(
            std::chrono::steady_clock::now() - start).count();
        std::printf("{\"cycles\": %llu, \"seconds\": %.9f, \"counter\": %u, \"out\": [",
                    (unsigned long long)(cycles - start_cycles), seconds, (unsigned)top->cycles);
        for (std::size_t k = 0; k < out.size(); ++k)
            std::printf("%s%u", k ? ", " : "", out[k]);
        std::printf("]}\n");
    }
    top->final();
    delete top;
    return 0;
}
"""

MAKEFILE = """include Vtop.mk

bench_main.o: bench_main.cpp
\t$(OBJCACHE) $(CXX) $(CXXFLAGS) $(CPPFLAGS) $(OPT_FAST) -c -o $@ $<

bench: bench_main.o $(VK_GLOBAL_OBJS) $(VM_PREFIX)__ALL.a
\t$(LINK) $(LDFLAGS) $^ $(LOADLIBES) $(LIBS) -pthread -o $@
"""


def _words(value, count):
    return [(value >> (32 * k)) & 0xFFFFFFFF for k in range(count)]


def bare_loop(program, build_dir, batch, modes, seed, images, repeats, keep=False):
    """Build the bare C++ driver against ``build_dir``'s model and run ``repeats``
    batches; returns the parsed lines."""
    from systolic.sim._env import find_verilator, objcache_env, patched_environ
    from systolic.sim.runner import cache_root
    from systolic.sim.accel import MODE_CODES
    C, aw = program.config.cols, program.act_width
    L = len(program.network.layers)
    work = Path(tempfile.mkdtemp(prefix="systolic-bare-"))
    shutil.copytree(build_dir, work / "obj", ignore=shutil.ignore_patterns("runs"),
                    symlinks=True)
    obj = work / "obj"
    # Verilator spells a "__" in a port's name "___05F" in C++
    (obj / "bench_main.cpp").write_text(re.sub(r"\b([iow])__(valid|ready|payload)\b",
                                               r"\1___05F\2", DRIVER))
    (obj / "bench.mk").write_text(MAKEFILE)
    verilator = find_verilator()
    env = {**verilator.env, **objcache_env(verilator, cache_root() / "objects")}
    with patched_environ(env, path=verilator.path):
        made = subprocess.run(["make", "-C", str(obj), "-f", "bench.mk", "bench"],
                              capture_output=True, text=True)
    if made.returncode:
        raise SystemExit(f"bare driver build failed:\n{made.stdout[-3000:]}\n"
                         f"{made.stderr[-3000:]}")
    words_in = -(-C * aw // 32)
    words_round = -(-2 * L // 32)
    mask = (1 << aw) - 1
    beats = []
    for e in range(batch.shape[1]):
        beat = sum((int(batch[j, e]) & mask) << (j * aw) for j in range(C))
        beats += _words(beat, words_in)
    rounding = sum(MODE_CODES[m] << (2 * j) for j, m in enumerate(modes))
    words_out = program.output_words
    data = [words_in, batch.shape[1], words_round, words_out,
            *_words(rounding, words_round), seed, images, *beats]
    settings = work / "settings.bin"
    settings.write_bytes(np.asarray(data, dtype="<u4").tobytes())
    ran = subprocess.run([str(obj / "bench"), str(settings), str(repeats)],
                         capture_output=True, text=True, check=True)
    lines = [json.loads(line) for line in ran.stdout.splitlines() if line.startswith("{")]
    if keep:
        print(f"bare driver kept in {obj}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return lines


def _unpack_outputs(line, program):
    """The bare loop's output words -> (C, output_words) signed values."""
    C, aw = program.config.cols, program.act_width
    per_beat = -(-(C * aw + 1) // 32)
    words = line["out"]
    out = np.zeros((C, program.output_words), dtype=np.int64)
    for e in range(program.output_words):
        beat = sum(w << (32 * k) for k, w in enumerate(words[e * per_beat:(e + 1) * per_beat]))
        for j in range(C):
            v = (beat >> (j * aw)) & ((1 << aw) - 1)
            out[j, e] = v - (1 << aw) if v >> (aw - 1) else v
    return out


def _harness(program, x, args, clock, flags):
    from systolic.sim.accel import simulate
    result = simulate(program, np.concatenate([x] * args.batches), check_layers=args.layers,
                      build_args=flags, clock=clock)
    if not result.ok:
        raise SystemExit(f"harness run is not bit-exact: {result.first_problem()}")
    return result


def _summary(rates):
    return f"median {statistics.median(rates):>9,.0f}, best {max(rates):>9,.0f} cycles/s"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--network", default="lenet5")
    p.add_argument("--array", default="8x8")
    p.add_argument("--batches", type=int, default=5,
                   help="batches per run (default 5)")
    p.add_argument("--rounds", type=int, default=3,
                   help="runs of each of the three, interleaved (default 3)")
    p.add_argument("--layers", action="store_true",
                   help="the harness with the layer check")
    p.add_argument("--public-flat-rw", action="store_true",
                   help="build as cocotb does by default (every signal public)")
    p.add_argument("--keep", action="store_true", help="keep the bare driver's folder")
    args = p.parse_args(argv)

    from systolic.golden import models
    from systolic.golden.datasets import mnist
    from systolic.rtl.compiler import ArrayConfig, compile_network
    net = models.load(args.network)
    program = compile_network(net, ArrayConfig.parse_shape(args.array))
    C = program.config.cols
    x = models.mnist_input(net, mnist("holdout")[0][:C])
    flags = ["--public-flat-rw"] if args.public_flat_rw else []
    what = ("every signal public (cocotb's default)" if args.public_flat_rw else
            "only the ports and activation banks public")
    print(f"{args.network} on {args.array}: {program.cycles} compute cycles per batch of {C} "
          f"images; Verilator builds with {what}; {args.rounds} rounds of {args.batches} "
          f"batches each way", flush=True)

    rates = {"model": [], "gpi": [], "bare": []}
    compute = {"model": [], "gpi": []}
    for round_ in range(args.rounds):
        for clock in ("model", "gpi"):
            start = time.perf_counter()
            result = _harness(program, x, args, clock, flags)
            rates[clock] += [b.sim_cycles / b.wall_seconds for b in result.batches]
            compute[clock] += [b.busy_cycles / b.compute_seconds for b in result.batches]
            if result.built:
                print(f"  built the {clock}-clock model in {result.build_seconds:.1f} s",
                      flush=True)
            if round_ == 0:
                print(f"  {clock}-clock harness: simulator process {result.test_seconds:.1f} s"
                      f" for {args.batches} batches of {result.batches[0].sim_cycles} cycles,"
                      f" {time.perf_counter() - start:.1f} s with the Verilog", flush=True)
        lines = bare_loop(program, result.build_dir, x.reshape(C, -1), result.modes,
                          result.seed, C, args.batches, keep=args.keep)
        want = result.golden.logits[:C]
        for line in lines:
            np.testing.assert_array_equal(_unpack_outputs(line, program), want)
            assert line["counter"] == program.cycles, (line["counter"], program.cycles)
        rates["bare"] += [line["cycles"] / line["seconds"] for line in lines]

    print(f"harness, clock in the model (default): {_summary(rates['model'])} "
          f"(compute phase alone: {_summary(compute['model'])})")
    print(f"harness, cocotb GPI clock:             {_summary(rates['gpi'])} "
          f"(compute phase alone: {_summary(compute['gpi'])})")
    print(f"bare C++ loop (GPI-clock build):       {_summary(rates['bare'])} "
          f"(outputs bit-exact, cycle counter {program.cycles} as predicted)")
    bare = statistics.median(rates["bare"])
    for clock in ("model", "gpi"):
        ratio = statistics.median(rates[clock]) / bare
        best = max(rates[clock]) / max(rates["bare"])
        print(f"ratio harness ({clock} clock) / bare loop: {ratio:.2f} median, {best:.2f} best"
              + (f" (target >= 0.5: {'met' if ratio >= 0.5 else 'NOT met'})"
                 if clock == "model" else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
