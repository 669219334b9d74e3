"""The CUDA kernels run on the CPU: plugins/emu compiles the same kernel
sources with g++ against a host emulation of the CUDA execution model (one
thread per CUDA thread, warp-collective mma/mma.sp/shfl written from the PTX
ISA, cp.async copies landing only at their wait), under AddressSanitizer or
ThreadSanitizer, and checks every kernel through its C launcher against an
FP64 GEMM of the weight spa's repackers wrote: M from 1 to 70 (past 64
rows) and up to 200, FP16 and BF16, with and without split-K, with the contract's
tolerances. Speed is not measured here; plugins/bench/run_gpu.sh does that."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from spa.trt import repack
from spa.trt.bench_cases import write_cases, write_gqsa_case
from tests.conftest import load_bench, shared_folder

ROOT = Path(__file__).resolve().parents[1]
EMU = ROOT / "plugins" / "emu"
KERNELS = ROOT / "plugins" / "kernels"
CONTRACTS = ROOT / "plugins" / "trt" / "contracts"


def cuda_headers() -> bool:
    nvcc = shutil.which("nvcc")
    roots = [Path(os.environ.get("CUDA_HOME", "/nonexistent")), Path("/usr/local/cuda")]
    if nvcc:
        roots.insert(0, Path(nvcc).resolve().parents[1])
    return any((root / "include" / "cuda_fp16.h").is_file() for root in roots)


pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None or not cuda_headers(), reason="needs g++ and the CUDA toolkit's headers"
)


def tolerances() -> list[str]:
    contracts = [json.loads(path.read_text())["tolerance"] for path in sorted(CONTRACTS.glob("*.json"))]
    fp16 = {c["max"] for c in contracts}
    bf16 = {c["max_bf16"] for c in contracts}
    assert len(fp16) == 1 and len(bf16) == 1, "the kernels' contracts disagree on the tolerance"
    return ["--tolerance", repr(fp16.pop()), "--tolerance-bf16", repr(bf16.pop())]


def emulate(cases: Path, build: Path, *options: str, sanitizer: str = "address", kernels: Path | None = None,
            sms: int | None = None, row_halves: str | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key != "SPA_ROW_HALVES"}
    if kernels is not None:
        env["SPA_EMU_KERNELS"] = str(kernels)
    if sms is not None:  # the SM count the launchers see (their plans and row halves depend on it)
        env["SPA_EMU_SMS"] = str(sms)
    if row_halves is not None:  # the GPU harness's override of the rule (row_halves.json)
        env["SPA_ROW_HALVES"] = row_halves
    command = [str(EMU / "run.sh"), "--sanitizer", sanitizer, "--build-dir", str(build), str(cases), *options]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, check=False)


def shared_build(factory: pytest.TempPathFactory, sanitizer: str) -> Path:
    """The run's one build of the kernels for the emulation under ``sanitizer``, in a folder the
    test workers share (shared_folder): built once (a compile takes about a minute), then every
    run.sh call finds it current and only runs emu_check. Tests that break a copy of the
    kernels build their own."""
    with shared_folder(factory, f"emu-{sanitizer}") as folder:
        build = subprocess.run([str(EMU / "run.sh"), "--sanitizer", sanitizer, "--build-dir", str(folder), "--build-only"],
                               capture_output=True, text=True, cwd=ROOT, check=False)  # fmt: skip
        assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    return folder


@pytest.fixture(scope="session")
def asan_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_build(tmp_path_factory, "address")


@pytest.fixture(scope="session")
def tsan_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_build(tmp_path_factory, "thread")


def skip_where_thread_sanitizer_cannot_start(run: subprocess.CompletedProcess[str]) -> None:
    if "FATAL: ThreadSanitizer" in run.stderr:
        pytest.skip(f"ThreadSanitizer cannot start on this machine: {run.stderr.strip().splitlines()[0]}")


def thread_sanitizer_run(run: subprocess.CompletedProcess[str]) -> None:
    """Skips where ThreadSanitizer cannot start; fails on any report."""
    skip_where_thread_sanitizer_cannot_start(run)
    assert "ThreadSanitizer" not in run.stderr, run.stderr[-6000:]
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


def write_mixed_cases(folder: Path) -> int:
    """w4a16 / w4_sp24 at three shapes: a partly idle CTA (5 of 8 tiles) and 3
    groups; 3 tiles of 8 groups; one tile of 32 groups (the launcher splits K
    there; unsplit, both kernels at M <= 8 run their unguarded steady-state
    ring). GQSA at g = 8..64 on the first; w4_gqsa_tile has its own test."""
    lines = write_cases(folder, shapes=((384, 80), (1024, 48), (4096, 16)))
    kept = [line for line in lines if not line.startswith("w4_gqsa") or (" 384 80 " in line and "tile" not in line)]
    (folder / "cases.txt").write_text("\n".join(kept) + "\n")
    return len(kept)


def results(output: str) -> list[tuple[str, str, str, int, int, float]]:
    pattern = re.compile(r"^(PASSED|FAILED) \| (\S+) (fp16|bf16) K=\d+ N=\d+ g=\d+ M=(\d+) slices=\d split=(-?\d+): max_rel_err=(\S+)$")
    rows = []
    for line in output.splitlines():
        if match := pattern.match(line):
            verdict, kernel, dtype, m, split, err = match.groups()
            rows.append((verdict, kernel, dtype, int(m), int(split), float(err)))
    return rows


# First in the file: the longest tests, one per worker under pytest -n 2.
@pytest.mark.parametrize("kernels", ["w4a16,w4_sp24,w4_gqsa_tile", "w4_gqsa"])
def test_every_kernel_at_every_m_up_to_64_under_thread_sanitizer(tmp_path: Path, tsan_build: Path, kernels: str) -> None:
    """Issue 13: no data race at any M in 1..64 (each tile width MT and every count of
    pad rows, row halves above 32; w4_gqsa: every pass width and remainder) in any
    kernel, FP16: w4a16, w4_sp24 and w4_gqsa_tile (keep 4) unsplit and split in two
    (slabs, kept arrival counters, the last CTA's sum), w4_gqsa at g = 16; K = 256,
    N = 144 (two column blocks, the second partly idle)."""
    lines = write_cases(tmp_path / "cases", shapes=((256, 144),))
    names = {"w4a16_256x144", "w4_sp24_256x144", "w4_gqsa_g16_256x144", "w4_gqsa_tile_keep4_256x144"}
    kept = [line for line in lines if line.split()[-1] in names and line.split()[0] in kernels.split(",")]
    assert len(kept) == len(kernels.split(","))
    (tmp_path / "cases" / "cases.txt").write_text("\n".join(kept) + "\n")
    ms = list(range(1, 65))
    run = emulate(tmp_path / "cases", tsan_build, "--m", ",".join(map(str, ms)), "--splits", "0,2",
                  "--dtypes", "fp16", "--kept-counters", "1", *tolerances(), sanitizer="thread")  # fmt: skip
    thread_sanitizer_run(run)
    rows = results(run.stdout)
    splits = 1 if kernels == "w4_gqsa" else 2
    assert len(rows) == len(ms) * len(kept) * splits and all(verdict == "PASSED" for verdict, *_ in rows)


@pytest.mark.parametrize("kernels", ["w4a16", "w4_sp24,w4_gqsa"])
def test_every_kernel_matches_the_reference_under_address_sanitizer(tmp_path: Path, asan_build: Path, kernels: str) -> None:
    """Two runs (one per worker under pytest -n 2). M: each row tile (MT = 1, 2,
    4, 8 with and without pad rows), past one 16-row step, 64 rows and past
    them; w4a16's every M in 1..64 is test_w4a16_at_every_m_up_to_64.
    Split -1 (no workspace) launches unsplit, the kernel path of a forced split 1."""
    cases = write_mixed_cases(tmp_path / "cases")
    ms = [1, 2, 3, 4, 8, 17, 64, 70]
    bf16_ms = [1, 3, 17, 70]  # BF16 differs in the conversions only, not in the tiling
    splits = [2, 0, -1]  # two slices, the launcher's choice, no workspace (so unsplit)
    rows = []
    for dtype, chosen in (("fp16", ms), ("bf16", bf16_ms)):
        run = emulate(tmp_path / "cases", asan_build, "--kernels", kernels, "--dtypes", dtype,
                      "--m", ",".join(map(str, chosen)), "--splits", ",".join(map(str, splits)),
                      *tolerances())  # fmt: skip
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
        assert "runs, 0 failed" in run.stdout
        rows += results(run.stdout)
    dense = sum(1 for row in rows if row[1] != "w4_gqsa")
    assert dense == 3 * (len(ms) + len(bf16_ms)) * len(splits)  # shapes x (dtype, M) x split
    assert len(rows) - dense == (0 if kernels == "w4a16" else (cases - 6) * (len(ms) + len(bf16_ms)))
    assert all(verdict == "PASSED" for verdict, *_ in rows)
    # FP16 sums are accurate well inside the tolerance; BF16 is limited by its own output rounding.
    assert max(err for _, _, dtype, *_, err in rows if dtype == "fp16") < 1e-3
    assert max(err for _, _, dtype, *_, err in rows if dtype == "bf16") < 2.0**-8


@pytest.mark.parametrize("kernel", ["w4a16", "w4_sp24"])
def test_dense_kernel_at_every_m_up_to_64(tmp_path: Path, asan_build: Path, kernel: str) -> None:
    """Issue 13: w4a16 and w4_sp24 correct at every M in 1..64 (MT = 1, 2, 4, 8 and every
    count of pad rows, row halves above 32) and past 64 rows, on a shape with
    two CTAs of 8 tiles, the second one partly idle (N = 144: 9 tiles), and two stages of
    K (w4a16 256: 128-k groups; w4_sp24 512: 256-k stages), unsplit (the launcher's
    choice there) and split in two (the in-kernel reduction: slabs, counters, the last
    CTA's sum), FP16 and BF16."""
    lines = write_cases(tmp_path / "cases", shapes=(({"w4a16": 256, "w4_sp24": 512}[kernel], 144),))
    (tmp_path / "cases" / "cases.txt").write_text("\n".join(line for line in lines if line.split()[0] == kernel) + "\n")
    ms = [*range(1, 65), 70]
    run = emulate(tmp_path / "cases", asan_build, "--kernels", kernel, "--m", ",".join(map(str, ms)),
                  "--splits", "0,2", "--dtypes", "fp16,bf16", *tolerances())  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    rows = results(run.stdout)
    assert sorted((dtype, m, split) for _, _, dtype, m, split, _ in rows) == sorted(
        (d, m, split) for d in ("fp16", "bf16") for m in ms for split in (0, 2)
    )
    assert all(verdict == "PASSED" for verdict, *_ in rows)
    assert max(err for _, _, dtype, *_, err in rows if dtype == "fp16") < 1e-3
    assert max(err for _, _, dtype, *_, err in rows if dtype == "bf16") < 2.0**-8


def test_w4_gqsa_at_every_m_up_to_64(tmp_path: Path, asan_build: Path) -> None:
    """Issue 13: w4_gqsa (column-owned groups on CUDA cores) correct at every M in 1..64
    and past 64 rows, on K = 256, N = 144: passes of 8 rows (gqsa_pass_rows),
    every full pass in one launch and the rest in a second; g = 8, 16, 32, 64, FP16 and
    BF16."""
    lines = write_cases(tmp_path / "cases", shapes=((256, 144),))
    gqsa = [line for line in lines if line.split()[0] == "w4_gqsa"]
    assert sorted(int(line.split()[3]) for line in gqsa) == [8, 16, 32, 64]
    (tmp_path / "cases" / "cases.txt").write_text("\n".join(gqsa) + "\n")
    ms = [*range(1, 65), 70]
    run = emulate(tmp_path / "cases", asan_build, "--kernels", "w4_gqsa", "--m", ",".join(map(str, ms)),
                  "--dtypes", "fp16,bf16", *tolerances())  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    rows = results(run.stdout)
    assert len(rows) == len(ms) * 4 * 2 and all(verdict == "PASSED" for verdict, *_ in rows)
    assert max(err for _, _, dtype, *_, err in rows if dtype == "fp16") < 1e-3
    assert max(err for _, _, dtype, *_, err in rows if dtype == "bf16") < 2.0**-8


def test_w4_gqsa_tile_at_every_m_up_to_64(tmp_path: Path, asan_build: Path) -> None:
    """The tile-shared GQSA kernel correct at every M in 1..64 (MT = 1, 2, 4, 8 and
    every count of pad rows) and past 64 rows, on K = 384 (three 128-k
    slabs: the layout pads a fourth, whose activations the kernel zero-fills)
    and N = 144 (two CTAs, the second with one of 8 tiles), keeping 4 and 2 of
    the 8 groups of every slab; unsplit and split in two (in-kernel reduction,
    kept counters: each call must leave them at 0), FP16 and BF16."""
    lines = write_cases(tmp_path / "cases", shapes=((384, 144),))
    tile = [line for line in lines if line.startswith("w4_gqsa_tile")]
    assert [line.split()[4] for line in tile] == ["2", "4"]  # keep
    ms = [*range(1, 65), 70]
    rows = []
    for keep in ("4", "2"):
        (tmp_path / "cases" / "cases.txt").write_text(next(line for line in tile if line.split()[4] == keep) + "\n")
        run = emulate(tmp_path / "cases", asan_build, "--kernels", "w4_gqsa_tile", "--m", ",".join(map(str, ms)),
                      "--splits", "0,2", "--dtypes", "fp16,bf16", "--kept-counters", "1", *tolerances())  # fmt: skip
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
        rows += [(keep, *row) for row in results(run.stdout)]
    assert len(rows) == 2 * len(ms) * 2 * 2  # keep x M x split x dtype
    assert all(verdict == "PASSED" for _, verdict, *_ in rows)
    assert max(err for _, _, _, dtype, *_, err in rows if dtype == "fp16") < 1e-3
    assert max(err for _, _, _, dtype, *_, err in rows if dtype == "bf16") < 2.0**-8


def test_rows_above_32_in_two_ctas_per_column_block_or_one(tmp_path: Path, asan_build: Path) -> None:
    """Above 32 rows a launch gives each column block two CTAs of 32 rows (row_halves: blockIdx.x
    = 2 x block + half, each half with its own slabs and arrival counter) where the halved grid fits
    one wave, else one CTA of 64 rows (MT = 8). On 132 SMs the two cases' 2 column blocks take
    halves, on one SM whole rows (and halves again where SPA_ROW_HALVES=2 forces them, as the GPU
    harness does); exact for every dense kernel, unsplit and split (kept counters: every call
    leaves all of them at 0), at a half's edges and past 64 rows."""
    lines = write_cases(tmp_path / "cases", shapes=((384, 144),))
    keep = [line for line in lines if line.startswith(("w4a16", "w4_sp24")) or (line.startswith("w4_gqsa_tile") and line.split()[4] == "4")]
    (tmp_path / "cases" / "cases.txt").write_text("\n".join(keep) + "\n")
    assert len(keep) == 3
    for sms, forced, ms, dtypes in ((132, None, [33, 40, 63, 64, 70], "fp16,bf16"),
                                    (1, None, [33, 40, 63, 64, 70], "fp16,bf16"), (1, "2", [33, 64], "fp16")):  # fmt: skip
        run = emulate(tmp_path / "cases", asan_build, "--m", ",".join(map(str, ms)), "--splits", "0,2",
                      "--dtypes", dtypes, "--kept-counters", "1", *tolerances(), sms=sms, row_halves=forced)  # fmt: skip
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
        rows = results(run.stdout)
        assert len(rows) == 3 * len(ms) * 2 * len(dtypes.split(",")) and all(verdict == "PASSED" for verdict, *_ in rows)
        assert max(err for _, _, dtype, *_, err in rows if dtype == "fp16") < 1e-3


def test_rows_above_64_in_one_launch_of_64_row_chunks(tmp_path: Path, asan_build: Path) -> None:
    """Above 64 rows, where the 64-row chunks make half a wave of CTAs, w4a16, w4_sp24 and
    w4_gqsa_tile run one unsplit launch whose column blocks each take ceil(M / 64) CTAs of 64
    rows, in groups of 8 blocks chunk by chunk (row_share). On one SM (so even 11 column blocks
    fill a wave; on 132 SMs the other tests' M = 70 runs as calls of 64 rows), 11 column blocks
    (the last group 3 wide, the last block 1 tile of 8) at M = 65 (2 chunks, the last of 1 row)
    and 200 (4 chunks, the last of 8 rows): exact in both dtypes, and w4_gqsa beside them (its
    passes of rows); at M = 65 in FP16 also with a forced split, which such a launch ignores."""
    lines = write_cases(tmp_path / "cases", shapes=((512, 1296),))  # w4_gqsa at g = 16; w4_gqsa_tile at both keeps
    ms = [65, 200]
    run = emulate(tmp_path / "cases", asan_build, "--m", ",".join(map(str, ms)), "--splits", "0",
                  "--dtypes", "fp16,bf16", *tolerances(), sms=1)  # fmt: skip
    forced = emulate(tmp_path / "cases", asan_build, "--m", "65", "--splits", "2", "--dtypes", "fp16", *tolerances(),
                     sms=1)  # fmt: skip
    for done in (run, forced):
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    rows, forced_rows = results(run.stdout), results(forced.stdout)
    assert len(rows) == len(lines) * len(ms) * 2, run.stdout[-3000:]  # case x M x dtype
    assert len(forced_rows) == len(lines), forced.stdout[-3000:]  # w4_gqsa (no split) runs as it is
    assert {kernel for _, kernel, *_ in rows} == {"w4a16", "w4_sp24", "w4_gqsa", "w4_gqsa_tile"}
    assert all(verdict == "PASSED" for verdict, *_ in rows + forced_rows), [r for r in rows + forced_rows if r[0] != "PASSED"]
    assert max(err for _, _, dtype, *_, err in rows + forced_rows if dtype == "fp16") < 1e-3


def test_kept_split_counters_replace_the_memset(tmp_path: Path, asan_build: Path) -> None:
    """Callers that keep the split-K arrival counters (the TensorRT plugin per
    execution context, the GPU harness) pass them to the _ex launchers, which
    then issue no memset: one launch per call. One buffer, zeroed once, serves
    every run of a case (both dtypes, M in one and in two 64-row launches,
    the launcher's split and a forced one), so each call must leave it at 0
    (emu_check fails a run that does not) and stay exact. A buffer left at 1
    by a "previous call" must break the runs: the kernels read the kept
    counters, not the workspace's."""
    lines = write_cases(tmp_path / "cases", shapes=((1024, 48), (4096, 16)))
    (tmp_path / "cases" / "cases.txt").write_text("\n".join(line for line in lines if not line.startswith("w4_gqsa")) + "\n")
    ms = [1, 70]
    run = emulate(tmp_path / "cases", asan_build, "--m", ",".join(map(str, ms)), "--splits", "0,2",
                  "--kept-counters", "1", *tolerances())  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    rows = results(run.stdout)
    assert len(rows) == 2 * 2 * 2 * len(ms) * 2 and all(verdict == "PASSED" for verdict, *_ in rows)
    stale = emulate(tmp_path / "cases", asan_build, "--m", "1", "--splits", "2", "--kept-counters", "2",
                    *tolerances())  # fmt: skip
    assert stale.returncode != 0
    assert "FAILED" in stale.stdout and "kept split-K counter was left at" in stale.stdout


def gqsa_structure(k: int, n: int, g: int, counts: dict[int, int], seed: int) -> repack.GQSAArrays:
    """GQSA arrays where column c keeps counts.get(c, 0) groups (the first ones)."""
    rng = np.random.default_rng(seed)
    cols = [np.arange(counts.get(c, 0), dtype=np.int32) for c in range(n)]
    nnz = sum(len(c) for c in cols)
    row_ptr = np.concatenate([[0], np.cumsum([len(c) for c in cols])]).astype(np.int32)
    values = rng.integers(0, 256, size=(nnz, g // 2)).astype(np.uint8)
    scales = (rng.random(nnz) * 0.02 + 0.002).astype(np.float16)
    col_idx = np.concatenate(cols) if nnz else np.zeros(0, np.int32)
    return repack.GQSAArrays(values, col_idx, row_ptr, scales, k, n, g)


def test_gqsa_column_ownership_edge_cases(tmp_path: Path, asan_build: Path) -> None:
    """Each warp owns whole columns (those starting in its 128 entries): empty
    columns inside and at the end, a column longer than several warps' shares
    (the warps in between own nothing), columns crossing 32-entry steps, a
    weight with no kept group at all, and 3000 columns (the 32-way search for
    a warp's first and last column takes three rounds)."""
    folder = tmp_path / "cases"
    folder.mkdir()
    cases = {
        "inner_and_trailing_empty": gqsa_structure(1024, 40, 16, {10: 64, **{c: 1 for c in range(11, 20)}, 30: 64}, 1),
        "one_long_column": gqsa_structure(8192, 8, 16, {0: 512, **{c: 3 for c in range(1, 8)}}, 2),
        "steps_and_segments": gqsa_structure(512, 24, 8, {c: (7 * c) % 64 for c in range(24)}, 3),
        "no_kept_group": gqsa_structure(256, 16, 16, {}, 4),
        # 3000 columns of 0..4 groups: the warps' 32-way column search takes 3 rounds
        "many_columns": gqsa_structure(256, 3000, 16, {c: c % 5 for c in range(3000)}, 5),
    }
    lines = [write_gqsa_case(folder, arrays, prefix) for prefix, arrays in cases.items()]
    (folder / "cases.txt").write_text("\n".join(lines) + "\n")
    run = emulate(folder, asan_build, "--m", "1,3,9", *tolerances())
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    rows = results(run.stdout)
    assert len(rows) == len(cases) * 2 * 3 and all(verdict == "PASSED" for verdict, *_ in rows)


def test_gqsa_fast_steps_at_column_lengths_around_the_step(tmp_path: Path, asan_build: Path) -> None:
    """A warp adds the 32-entry steps that lie inside one column without a
    scan (each lane's own sums) and reduces them where the column ends: column
    lengths on both sides of 32 and 64 entries (one step, a pair of steps),
    longer than a warp's share of 128, next to empty and one-entry columns, at
    every group size (each loads its value words with its own width: 4, 8,
    16 and 2 x 16 B), M up to an 8-row pass plus a remainder."""
    folder = tmp_path / "cases"
    folder.mkdir()
    lengths = [0, 1, 31, 32, 33, 63, 64, 65, 96, 97, 128, 129, 200, 255, 256, 7]
    counts = dict(enumerate(lengths))
    lines = [write_gqsa_case(folder, gqsa_structure(256 * g, len(lengths), g, counts, g), f"fast_g{g}") for g in (8, 16, 32, 64)]
    (folder / "cases.txt").write_text("\n".join(lines) + "\n")
    run = emulate(folder, asan_build, "--m", "1,2,8,11", *tolerances())
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    rows = results(run.stdout)
    assert len(rows) == 4 * 2 * 4 and all(verdict == "PASSED" for verdict, *_ in rows)


def test_gqsa_passes_narrow_where_a_pass_overflows_l1(tmp_path: Path, asan_build: Path) -> None:
    """Where 8 rows x K of activations would overflow L1 the launcher runs
    passes of 4 (K = 16384) or 2 rows (K = 28672), every full pass in one
    launch (blockIdx.y) and the remainder in a second."""
    folder = tmp_path / "cases"
    folder.mkdir()
    lengths = [5, 300, 0, 700, 64, 1]
    counts = dict(enumerate(lengths))
    lines = [write_gqsa_case(folder, gqsa_structure(k, len(lengths), 16, counts, k), f"pass_k{k}") for k in (16384, 28672)]
    (folder / "cases.txt").write_text("\n".join(lines) + "\n")
    run = emulate(folder, asan_build, "--m", "1,3,9", *tolerances())
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    rows = results(run.stdout)
    assert len(rows) == 2 * 2 * 3 and all(verdict == "PASSED" for verdict, *_ in rows)


def test_mma_sp_probe_decodes_the_emulated_metadata_reading(tmp_path: Path) -> None:
    """plugins/bench/mma_sp_probe asks the tensor cores how they read the
    mma.sp metadata (run_gpu.sh runs it first). On the emulation, which
    implements spa's reading, it must find exactly that one."""
    command = [str(EMU / "run.sh"), "--build-dir", str(tmp_path / "build"), "--probe"]
    run = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("PASSED | mma.sp probe: the tensor cores read the metadata as H0 (spa's layout")


def test_no_data_race_under_thread_sanitizer(tmp_path: Path, tsan_build: Path) -> None:
    """A missing __syncthreads (a stage read while another warp's copy lands)
    or an unsynchronised shared-memory write is a ThreadSanitizer report."""
    lines = write_cases(tmp_path / "cases", shapes=((384, 80), (1024, 48)))
    kept = [line for line in lines if not line.startswith("w4_gqsa") or line.split()[1:4] == ["384", "80", "16"]]
    (tmp_path / "cases" / "cases.txt").write_text("\n".join(kept) + "\n")
    # Split 0: the launcher's choice; 2: across blocks, reduced in the kernel
    # (slabs, an integer arrival counter, the last CTA's sum).
    run = emulate(tmp_path / "cases", tsan_build, "--m", "1,16", "--splits", "0,2", *tolerances(),
                  sanitizer="thread")  # fmt: skip
    thread_sanitizer_run(run)
    # dense: kernel x shape x dtype x M x split; GQSA g = 16: dtype x M; w4_gqsa_tile: keep x dtype x M x split
    assert len(results(run.stdout)) == 2 * 2 * 2 * 2 * 2 + 2 * 2 + 2 * 2 * 2 * 2
    assert "runs, 0 failed" in run.stdout


def test_the_emulation_catches_a_missing_pipeline_barrier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not vacuous, twice: w4a16 without the __syncthreads that publishes each
    cp.async stage reads shared memory no copy has reached yet (wrong results),
    and ThreadSanitizer reports the race (fibers are threads to it; a switch
    between them orders nothing). The barrier is in the stage ring that w4a16
    and w4_sp24 share (spa_tile.cuh); a kernel source's quoted #include finds
    the broken header next to it first."""
    broken = tmp_path / "kernels"
    broken.mkdir()
    for source in [*KERNELS.glob("*.cu"), *KERNELS.glob("*.cuh"), *KERNELS.glob("*.h")]:
        shutil.copy(source, broken / source.name)
    text = (broken / "spa_tile.cuh").read_text()
    barrier = "    __syncthreads();  // stage s landed"
    assert text.count(barrier) == 1
    (broken / "spa_tile.cuh").write_text(text.replace(barrier, "    // (barrier removed)"))
    write_cases(tmp_path / "cases", shapes=((384, 80),))
    monkeypatch.setenv("TSAN_OPTIONS", "halt_on_error=0:exitcode=66")  # report, and let the run finish
    run = emulate(tmp_path / "cases", tmp_path / "build", "--kernels", "w4a16", "--m", "1", "--splits", "1",
                  "--dtypes", "fp16", kernels=broken, sanitizer="thread")  # fmt: skip
    skip_where_thread_sanitizer_cannot_start(run)
    assert run.returncode != 0, run.stdout + run.stderr
    assert "WARNING: ThreadSanitizer: data race" in run.stderr
    rows = results(run.stdout)
    assert rows and all(verdict == "FAILED" for verdict, *_ in rows)


def test_the_emulation_catches_work_before_the_grid_dependency_wait(tmp_path: Path) -> None:
    """Programmatic dependent launch: the emulation fails a launch whose kernel copies
    activations (the stage ring with its griddepcontrol.wait moved past the ring) or reads
    them (w4_gqsa without its wait) before the wait, naming which: on a GPU either could
    meet what the kernel before is still writing."""
    broken = tmp_path / "kernels"
    shutil.copytree(KERNELS, broken)
    device = (broken / "spa_tile.cuh").read_text()
    wait = "  for (int s = 0; s < kStages - 1; ++s) load_fixed(s, s < g_count);\n  grid_dependency_wait();\n"
    assert device.count(wait) == 1
    device = device.replace(wait, wait.replace("  grid_dependency_wait();\n", ""))
    (broken / "spa_tile.cuh").write_text(device.replace("  cp_async_wait<0>();\n}", "  cp_async_wait<0>();\n  grid_dependency_wait();\n}"))
    gqsa = (broken / "w4_gqsa.cu").read_text()
    assert gqsa.count("  grid_dependency_wait();\n") == 1
    (broken / "w4_gqsa.cu").write_text(gqsa.replace("  grid_dependency_wait();\n", ""))
    write_cases(tmp_path / "cases", shapes=((384, 80),))
    for kernel, what in (("w4a16", "an activation copy"), ("w4_gqsa", "an activation read")):
        run = emulate(tmp_path / "cases", tmp_path / "build", "--kernels", kernel, "--m", "1", "--splits", "0",
                      "--dtypes", "fp16", kernels=broken)  # fmt: skip
        assert run.returncode == 1, run.stdout + run.stderr
        lines = [line for line in run.stdout.splitlines() if line.startswith(("PASSED |", "FAILED |"))]
        assert lines and all(line.startswith(f"FAILED | {kernel} ") for line in lines), run.stdout
        assert all(what in line and "before griddepcontrol.wait" in line for line in lines), run.stdout


def test_the_emulation_reports_a_deadlock_instead_of_hanging(tmp_path: Path) -> None:
    """A barrier some threads never reach (lane 0 at __syncthreads while the rest of its
    warp waits for it in a shuffle) hangs a GPU. Here a round of the block's threads in
    which none arrives anywhere fails the launch, naming the deadlock and the block."""
    broken = tmp_path / "kernels"
    shutil.copytree(KERNELS, broken)
    source = (broken / "w4a16.cu").read_text()
    anchor = "  constexpr int kStages = stages_for(MT);\n"
    assert source.count(anchor) == 1
    divergent = "  if (threadIdx.x == 0) __syncthreads(); else if (threadIdx.x < 32) (void)__shfl_sync(0xffffffffu, 0, 0);\n"
    (broken / "w4a16.cu").write_text(source.replace(anchor, anchor + divergent))
    write_cases(tmp_path / "cases", shapes=((384, 80),))
    run = emulate(tmp_path / "cases", tmp_path / "build", "--kernels", "w4a16", "--m", "1", "--splits", "0",
                  "--dtypes", "fp16", kernels=broken)  # fmt: skip
    assert run.returncode == 1, run.stdout + run.stderr
    lines = [line for line in run.stdout.splitlines() if line.startswith(("PASSED |", "FAILED |"))]
    assert lines and all(line.startswith("FAILED | w4a16 ") for line in lines), run.stdout
    assert all("deadlock: 256 of 256 threads wait at barriers that cannot complete" in line and "(block 0)" in line for line in lines), run.stdout


def test_timing_model_mirrors_the_launchers_split_plan(tmp_path: Path) -> None:
    """plugins/bench/model.py predicts the next GPU run with its own copy of
    plan_split; it must choose what the C++ launchers choose, on 132 and 108 SMs, with the
    occupancy the launchers query (2 or 3 CTAs per SM: wave_splits up to M = 16) or without;
    and w4_gqsa's rows per pass."""
    model = load_bench("model")
    binary = tmp_path / "plan_dump"
    cuda = next(root for root in (Path(shutil.which("nvcc") or "/x").resolve().parents[1], Path("/usr/local/cuda"))
                if (root / "include" / "cuda_fp16.h").is_file())  # fmt: skip
    build = subprocess.run(["g++", "-std=c++20", "-O1", "-DSPA_EMULATE", f"-I{KERNELS}", f"-I{cuda / 'include'}",
                            str(EMU / "plan_dump.cpp"), str(EMU / "emu_runtime.cpp"), "-o", str(binary), "-lpthread"],
                           capture_output=True, text=True, check=False)  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    shapes = [(4096, 4096), (4096, 11008), (11008, 4096), (5120, 13824), (8192, 28672), (28672, 8192), (384, 80), (1024, 48), (4096, 16)]
    inputs = [(m, n // 16, k // 128, slices, split, ws, ctas) for k, n in shapes for m in (1, 2, 8, 9, 16, 17, 32, 64, 70)
              for slices, split in ((0, 0), (2, 0), (4, 0), (1, 3), (0, 8), (4, 64)) for ws in (0, 1)
              for ctas in (0, 2, 3)]  # fmt: skip
    text = "".join(" ".join(map(str, row)) + "\n" for row in inputs)
    for sms in (132, 108):
        run = subprocess.run([str(binary)], input=text, capture_output=True, text=True, check=False,
                             env={**os.environ, "SPA_EMU_SMS": str(sms)})  # fmt: skip
        assert run.returncode == 0, run.stderr
        got = [tuple(map(int, line.split())) for line in run.stdout.splitlines()]
        want = [model.plan_split(m, t, g, s, p, bool(ws), sms=sms, ctas_per_sm=c) for m, t, g, s, p, ws, c in inputs]
        assert got == want
    # w4_gqsa's rows per pass (gqsa_pass_rows), on both sides of each halving
    ks = [8, 4096, 11008, 12500, 12501, 13824, 25000, 25001, 28672, 50000, 50001, 100000, 100001, 524288]
    run = subprocess.run([str(binary), "--gqsa-pass-rows"], input="".join(f"{k}\n" for k in ks), capture_output=True,
                         text=True, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert [int(x) for x in run.stdout.split()] == [model.gqsa_pass_rows(k) for k in ks]
    assert [model.gqsa_pass_rows(k) for k in (11008, 13824, 28672, 100001)] == [8, 4, 2, 1]
