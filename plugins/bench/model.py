"""Timing model of spa's kernels, calibrated on a measured run (stdlib only).

    python3 plugins/bench/model.py calibrate [results.json split_sweep.json]   # refit, print the constants
    python3 plugins/bench/model.py predict [results.json split_sweep.json] [-o predictions.json]
    python3 plugins/bench/model.py compare measured.json [predictions.json]
    python3 plugins/bench/model.py bounds [results.json]   # the goals at the kernels' limits (bytes, L1, t0)

(compare and bounds are written in model_report.py.)

The model (diagnosis.md §2.5, fitted here to the 2026-12-04 H200 run):

w4a16 / w4_sp24: each warp streams `iters` groups of 128 k; one group costs it

    T_iter = max(chain + chain_mt * MT,                          # serial latency per group
                 W * instr(kernel, slices, MT) / issue_rate,    # instruction issue of W warps per SM
                 W * bytes_k / (HBM / SMs))                       # HBM

where W is the number of streaming warps resident per SM (grid, shared memory
and registers decide it), MT the number of 8-token tiles. A launch costs
`t0 + waves * iters * T_iter` (the max taken smoothly, as a 4-norm), plus
`t_split + atomic * splits * M * N / 1e6` when K is split across blocks
(memset and finalize launches; FP32 atomics into the workspace). Both kernels now
reduce the split in the kernel (slabs + arrival counters): instead
every split's slab written once and read back once (up to MT = 4 all but
the last CTA's own: (2 * splits - 1) * M * N * 4 bytes) at the HBM rate,
plus `SPLIT_COUNTERS * t_split` (the counters' memset, one of the two
launches) where the caller does not keep the counters (KEPT_COUNTERS).
Launch plans follow the launchers' own
`plan_split` (mirrored in `plan_split` below; a test compares the two).

w4_gqsa: issue bound at every M (ncu: instructions = a + b * (M - 1)), one
pass per 8 rows (the committed launcher: per gqsa_pass_rows(K) rows; all
full passes in one launch, the rest in a second: one launch cost t0), with
an L1 capacity term for the gathered activations:

    T = t0 + passes * nnz_g * (per_entry + per_token * (m - 1)) * (1 + l1 * max(0, m * K / 1e5 - 1))

(the committed kernel: per_entry and per_token scaled by its static SASS at
the shape's share of scan steps, gqsa_ratios, each above an L1 floor).

Predictions are for the kernels as committed (`KERNELS` names the state they
model); a kernel change that the model does not describe leaves them stale.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from pathlib import Path
from typing import Any

Row = dict[str, Any]
HERE = Path(__file__).resolve().parent
SMS, HBM_GBPS = 132, 4575.0  # H200, measured read bandwidth (harness read_kernel)
SMEM_PER_SM, REGS_PER_SM = 233472, 65536
# The kernels the constants describe: the launcher's choice is the table of
# diagnosis.md §2.6 (slices = 1; splits by M, K, N); kernel bodies as measured.
KERNELS = ("w4a16 and w4_sp24: 8-warp CTAs sharing one activation stage, 128-bit (w4a16) / ldmatrix (w4_sp24) "
           "weight and activation loads, precomputed addresses (V2, SASS-counted), split-K reduced in the kernel "
           "(slabs + arrival counters kept by the caller: no memset, no finalize, no FP32 atomics), scales staged "
           "by cp.async with the weights, "
           "two mma chains at MT <= 2 (W-2), launch table L1 with wave splits at M <= 16 (wave_splits), row halves "
           "above M = 32 (row_halves). w4_gqsa: as measured, but the dequant "
           "without I2F, FP16 products in half2 FMA chains, fast steps inside a column without a scan (gqsa_ratios) and "
           "passes of gqsa_pass_rows(K) rows")
# W-2 (scales staged by cp.async, two mma chains) is not measured yet: the
# serial chain per group is assumed to fall to this fraction of the calibrated
# value (diagnosis.md §2.5 estimates 0.74 -> 0.30-0.35 µs; 0.55 is the
# conservative end). An assumption, to be replaced by the next run's fit.
CHAIN_AFTER_W2 = 0.55

# Calibrated constants (`calibrate` refits them from results.json + split_sweep.json):
# t0, t_split, chain, chain_mt in µs; atomic in µs per million FP32 atomics.
# issue_rate: warp instructions per µs per SM (4 schedulers x 1.98 GHz x 0.55,
# the issue efficiency ncu showed; fixed). The instruction counts per warp and
# group (1 KB of w4a16 weights, 0.75 KB of w4_sp24) are fitted, starting from
# ncu's (diagnosis.md §1: w4a16 400 / 582 / 496 / 755 per KB at MT = 1, 2, 4, 8):
# a base, a cost per activation chunk each thread copies (slices x MT per
# stage) and one per 8-token tile (B fragment loads + mma). The fit makes them
# "effective" instructions: they absorb the latency those steps add, so they
# are not ncu's counts (the fitted chunk cost is ~3x its instruction count).
ISSUE_RATE = 4 * 1980 * 0.55
DENSE = {
    "t0": 3.88, "t_split": 1.41, "atomic": 5.92, "chain": 0.66, "chain_mt": 0.0945,
    "base_w4a16": 96.2, "base_w4_sp24": 18.5, "chunk": 65.2, "mt_w4a16": 28.7, "mt_w4_sp24": 49.7,
}  # fmt: skip
GQSA = {
    16: {"t0": 2.22, "per_entry": 17.3, "per_token": 4.7, "l1": 1.55},
    32: {"t0": 5.65, "per_entry": 10.8, "per_token": 7.07, "l1": 0.329},
}  # fmt: skip
# ptxas registers per thread of the measured instantiations (ncu), by MT.
REGS = {"w4a16": {1: 56, 2: 70, 4: 73, 8: 98}, "w4_sp24": {1: 61, 2: 80, 4: 90, 8: 125}}
# The w4a16 kernel after the instruction diet (W-3 without stream-K): 8 warps
# per CTA, one shared activation stage, stages 6 / 5 / 4 / 4. Its issue cost
# is the measured kernel's fitted cost times the ratio of static SASS
# instructions per KB of weights in the steady-state loop, FP16, sm_90
# (sass_budget.py: now 112.2 / 145.8 / 172.1 / 255.0 at MT = 1 / 2 / 4 / 8;
# the measured code had 464 / 501 / 557 / 665 at slices = 1). An assumption:
# that the fitted "effective" instructions shrink with the real ones.
# The split instantiation (in-kernel reduction) has its own loop: the same
# up to MT = 4 (113.0 / 145.8 / 173.1), and 255.0 at MT = 8 since each
# 8-token tile's group sums are scaled before the next tile's (it was 322.7
# while every tile's sums stayed live: ptxas rematerialised addresses at the
# 128-register cap); the unsplit MT = 8 loop is 248.0 (ptxas's allocation
# moved with the row-chunk prologue above 64 rows: 1 spill reload per pass
# instead of 20).
# w4_sp24 got the same skeleton (8 warps, shared stage, ldmatrix for values
# and activations, in-kernel split): 97.9 / 141.3 / 167.7 / 240.6 per KB of
# its 0.75 KB groups (99.8 / 141.3 / 176.6 / 243.2 split), against 514.6 /
# 568.3 / 618.2 / 723.2 in the measured body (sass_budget.py on the sources
# of commit d3b8c13, slices = 1).
MEASURED_PER_KB: dict[str, dict[int, float]] = {"w4a16": {1: 464, 2: 501, 4: 557, 8: 665}, "w4_sp24": {1: 514.6, 2: 568.3, 4: 618.2, 8: 723.2}}
V2_PER_KB: dict[str, dict[bool, dict[int, float]]] = {
    "w4a16": {False: {1: 112.2, 2: 145.8, 4: 172.1, 8: 248.0}, True: {1: 113.0, 2: 145.8, 4: 173.1, 8: 255.0}},
    "w4_sp24": {False: {1: 97.9, 2: 141.3, 4: 167.7, 8: 240.6}, True: {1: 99.8, 2: 141.3, 4: 176.6, 8: 243.2}},
}  # fmt: skip
V2_REGS = {"w4a16": {1: 80, 2: 79, 4: 105, 8: 128}, "w4_sp24": {1: 80, 2: 77, 4: 109, 8: 125}}  # ptxas, FP16, split
# w4a16's in-kernel split reduction: one memset launch (the arrival counters,
# <= 1 KB) of the two the measured split paid for in t_split. An assumption
# (the run measured memset + finalize together), to be refitted. Callers that
# keep the counters (spa_split_counters_size: the TensorRT plugin per
# execution context, the harness) skip that memset too: KEPT_COUNTERS = True
# prices the kernels as they run there (one launch per call); the harness's
# sweep times the memset path beside it (launcher_choice_memset_us).
SPLIT_COUNTERS = 0.5
KEPT_COUNTERS = True
# w4_gqsa as committed: the dequant without I2F, two steps of register
# prefetch, (FP16) the group's pairs scaled once by HMUL2 and each token's
# 16 products in half2 FMA chains, every token's row pinned in a register,
# value words in one 8- or 16-B load per entry, and two kinds of 32-entry
# steps: a fast step (inside one column, not its end: each lane adds to its
# own sums, no scan, no column walk) and a scan step (a column ends in it:
# the segmented scan, plus the fold of the lanes' sums). Static loops of
# gemv_kernel<half, 16, MB> (sass_budget.py; the scan step's from a build
# with the fast steps switched off), per KB at MB = 1 and 8, against the
# measured source (0d36e8a: every step a scan step, 464 and 1850.7):
GQSA_MEASURED_PER_KB = (464.0, 1850.7)
GQSA_FAST_PER_KB = (149.3, 470.7)
GQSA_SCAN_PER_KB = (445.3, 1640.0)
# The fitted per-entry (M = 1) and per-token costs are scaled by the static
# ratios at the shape's share of scan steps, about one per column: a column of
# C = 0.5 K / g kept entries takes C / 32 steps (gqsa_ratios). An assumption,
# like V2_PER_KB: that the fitted "effective" instructions shrink with the
# real ones. The model is issue-bound only, with an L1 floor under both costs
# (GQSA_L1_US: every token's 16 activations, 32 B per 16 weights, gathered
# through L1 at 128 B per clock and SM) that the fast step's per-token cost
# nearly reaches (1.09 against 0.96 us per million entries at g = 16): a
# CUDA-core GQSA kernel at M = 8 is near its L1 bound.
GQSA_L1_US = 32 / (128 * 1980 * SMS) * 1e6  # us per million (entry, token) of 16 weights


def gqsa_ratios(k: int, g: int, kept: float = 0.5) -> tuple[float, float]:
    """(per-entry, per-token) cost ratios of the committed w4_gqsa against the measured one at a
    shape whose columns keep ``kept`` of their K / g groups: scan steps are min(1, 32 / C) of all."""
    scan = min(1.0, 32 / max(1.0, kept * k / g))
    m1, m8 = ((1 - scan) * fast + scan * slow for fast, slow in zip(GQSA_FAST_PER_KB, GQSA_SCAN_PER_KB, strict=True))
    return m1 / GQSA_MEASURED_PER_KB[0], (m8 - m1) / (GQSA_MEASURED_PER_KB[1] - GQSA_MEASURED_PER_KB[0])


# w4_gqsa_tile (tile-shared GQSA on tensor cores): w4a16's skeleton, each
# stage two 128-k slabs (256 k) holding `keep` kept groups of 16 per slab and
# warp: 2 x (keep x (128 B of fragments + 32 B of scales) + 4 B of positions).
# Priced as w4a16 with its own bytes, its own static SASS per KB of those bytes
# (sass_budget.py, FP16, unsplit / split, by MT), registers and shared memory,
# and w4a16's launch table, each split taking whole stages (half its groups,
# rounded up); the same serial chain per stage as w4a16's per group (an
# assumption: 2 x keep mma per stage in one chain against w4a16's 8 in two).
# Not measured yet.
TILE_PER_KB: dict[int, dict[bool, dict[int, float]]] = {
    4: {False: {1: 136.7, 2: 171.7, 4: 205.9, 8: 286.2}, True: {1: 136.7, 2: 165.0, 4: 213.1, 8: 286.2}},
    2: {False: {1: 156.4, 2: 207.8, 4: 252.3, 8: 369.8}, True: {1: 156.4, 2: 199.9, 4: 255.5, 8: 365.0}},
}  # fmt: skip
TILE_REGS = {4: {1: 64, 2: 68, 4: 86, 8: 115}, 2: {1: 60, 2: 56, 4: 80, 8: 124}}  # ptxas, FP16
TILE_KEEP = 4  # the predicted rows: 4 of the 8 groups of every slab kept (50 %)


def tile_kb(keep: int) -> float:
    """KB a warp streams per stage (two 128-k slabs) of w4_gqsa_tile."""
    return 2 * (keep * 160 + 4) / 1024
CHAIN_SP24 = 0.84  # w4_sp24's chain relative to w4a16's (4 mma.sp per group instead of 8 mma; sweep fit 0.620 / 0.735)


def mt_for(m: int) -> int:
    """8-token tiles of a CTA covering m rows."""
    return 1 if m <= 8 else 2 if m <= 16 else 4 if m <= 32 else 8


def row_halves(m: int, n_tiles: int, sms: int = SMS) -> int:
    """spa_launch.cuh row_halves: 2 CTAs per column block (32 rows each, MT = 4) for a launch of m > 32
    rows where the halved grid still fits one wave unsplit (column blocks <= SMs), else 1."""
    return 2 if m > 32 and (n_tiles + 7) // 8 <= sms else 1


def row_tiles(m: int, n: int) -> tuple[int, int]:
    """spa_launch.cuh with_row_tiles for the first launch of m rows (at most 64) and n columns:
    (CTAs per column block, 8-token tiles per CTA)."""
    rows = min(m, 64)
    halves = row_halves(rows, n // 16)
    return halves, mt_for(-(-rows // halves))


def wave_splits(n_tiles: int, n_groups: int, ctas_per_sm: int, sms: int = SMS) -> int:
    """spa_launch.cuh wave_splits: the K splits (1..8, >= 4 groups each) whose CTAs fill whole
    waves best: least ceil(CTAs x splits / resident slots) x groups per split, fewer splits
    on a tie (less slab traffic)."""
    slots, ctas = ctas_per_sm * sms, (n_tiles + 7) // 8
    best, best_cost = 1, -1
    for wanted in range(1, max(1, min(8, n_groups // 4)) + 1):
        gps = -(-n_groups // wanted)
        splits = -(-n_groups // gps)
        cost = -(-(ctas * splits) // slots) * gps
        if best_cost < 0 or cost < best_cost:
            best, best_cost = splits, cost
    return best


def plan_split(m: int, n_tiles: int, n_groups: int, slices_wanted: int = 0, split_k: int = 0,
               has_workspace: bool = True, sms: int = SMS, ctas_per_sm: int = 0) -> tuple[int, int, int]:  # fmt: skip
    """(slices, splits, groups per split): plugins/kernels/spa_launch.cuh plan_split, line for line.
    ``ctas_per_sm``: the kernel's resident CTAs per SM (the launchers query it), which picks
    :func:`wave_splits`; 0: the table swept for the measured kernels."""
    slices = slices_wanted if m <= 16 and slices_wanted > 0 else 1
    splits = split_k
    if splits <= 0 and ctas_per_sm > 0 and m <= 16:
        splits = wave_splits(n_tiles, n_groups, ctas_per_sm, sms) if has_workspace else 1
    elif splits <= 0:
        if m <= 8:
            splits = min(8, n_groups // 4)
        elif m <= 16:
            wanted = min(8, 272 * sms // 10 // n_tiles)
            splits = 1
            while splits * 2 <= wanted:
                splits *= 2
        else:
            splits = min(8, 2 * sms // ((n_tiles + 7) // 8 * row_halves(m, n_tiles, sms)))
        splits = max(1, min(splits, n_groups // 4))
        if not has_workspace:
            splits = 1
    splits = max(1, min(splits, n_groups))
    gps = (n_groups + splits - 1) // splits
    return slices, (n_groups + gps - 1) // gps, gps


def plan_split_measured(m: int, n_tiles: int, n_groups: int, sms: int = SMS) -> tuple[int, int, int]:
    """The launchers' choice in the 2026-12-04 run (commit 20a0545): slices first, then splits."""
    slices = 1
    if m <= 16:
        while slices < 4 and n_tiles * slices < 8 * sms and n_groups // (2 * slices) >= 4:
            slices *= 2
    splits = max(1, min(-(-(4 * sms) // (n_tiles * slices)), n_groups // (4 * slices)))
    gps = (n_groups + splits - 1) // splits
    return slices, (n_groups + gps - 1) // gps, gps


def stages_for(mt: int, slices: int, kernel: str = "w4_sp24", measured: bool = False) -> int:
    """Pipeline stages: the 8-warp kernels 6 / 5 / 4 at MT = 1 / 2 / >= 4; the measured 4-warp w4_sp24 6 or 4."""
    if not measured:
        return 6 if mt <= 1 else 5 if mt == 2 else 4
    return 6 if mt * slices <= 2 else 4


def cta_warps(kernel: str) -> int:
    """Warps per CTA: 8 in both dense kernels (one shared activation stage)."""
    return 8


def smem_bytes(kernel: str, mt: int, slices: int) -> int:
    """The launchers' dynamic shared memory (w4a16.cu / w4_sp24.cu smem_bytes): per stage 8 warps' weights
    (w4a16 1 KB, w4_sp24 512 B values + 256 B metadata), MT x 8 rows x 128 activations, 8 x 32 B of scales."""
    weights = 1024 if kernel == "w4a16" else 768
    return stages_for(mt, 1, kernel) * (8 * weights + mt * 8 * 128 * 2 + 8 * 32)


def tile_smem_bytes(keep: int, mt: int) -> int:
    """w4_gqsa_tile.cu smem_bytes: 5 / 4 / 3 / 2 stages at MT = 1 / 2 / 4 / 8, each two slabs of 8 warps' keep x
    (128 B of fragments + 32 B of scales) + 4 B of positions, and MT x 8 rows x 272 activations (padded)."""
    stages = 5 if mt <= 1 else 4 if mt == 2 else 3 if mt == 4 else 2
    return stages * (8 * 2 * (keep * 160 + 4) + mt * 8 * 272 * 2)


def old_smem_bytes(kernel: str, mt: int, slices: int) -> int:
    """Dynamic shared memory of the measured 4-warp bodies (both kernels before V2)."""
    weights = 4 * 8 * 32 * 4 if kernel == "w4a16" else 4 * (4 * 32 + 4 * 16) * 4
    return stages_for(mt, slices, measured=True) * (weights + slices * mt * 8 * 136 * 2 + 4 * 32)


def dense_time(kernel: str, k: int, n: int, m: int, slices: int, splits: int, p: dict[str, float] = DENSE,
               chain_factor: float = 1.0, v2: bool = False) -> float:  # fmt: skip
    """One call's time. v2: the current kernels (8-warp CTAs, V2_PER_KB, row halves); otherwise the
    measured bodies. kernel "w4_gqsa_tile" (v2 only) is priced at TILE_KEEP kept groups per slab
    (TILE_PER_KB). Row halves (row_halves): twice the CTAs at MT = 4, each streaming the weights; the
    second read of each weight is served by L2 (its twin CTA is its neighbour in the launch order and
    reads it at the same time: an assumption, not measured yet), so HBM carries it once."""
    if m > 64:  # one launch of 64-row chunks or calls of 64 rows (run_split): not priced, not in results rows
        raise ValueError("the model prices launches of at most 64 rows (the harness's results rows)")
    halves, mt = row_tiles(m, n) if v2 else (1, mt_for(m))
    tile = kernel == "w4_gqsa_tile"
    n_groups, n_tiles = k // 128, n // 16
    splits = min(splits, n_groups)
    gps = -(-n_groups // splits)
    splits = -(-n_groups // gps)
    if tile:  # whole stages of 256 k per split: ceil(gps / 2) (w4_gqsa_tile.cu run)
        gps, units = -(-gps // 2), -(-k // 256)
        splits = min(splits, -(-units // gps))
    if v2:
        slices = 1
        warps_per_cta = cta_warps(kernel)
        blocks = -(-n_tiles // warps_per_cta) * splits * halves
        per_sm = resident_ctas(kernel, mt)
    else:
        warps_per_cta = 4 // slices  # streaming tiles per block (the measured 4-warp blocks)
        blocks = -(-n_tiles // warps_per_cta) * splits
        per_sm = min(16, SMEM_PER_SM // (old_smem_bytes(kernel, mt, slices) + 1024),
                     REGS_PER_SM // (REGS[kernel][mt] * 128))  # fmt: skip
        warps_per_cta = 4
    iters = -(-gps // slices)
    waves = -(-blocks // (per_sm * SMS))
    warps = min(blocks, per_sm * SMS) * warps_per_cta / SMS  # streaming warps resident per SM
    chain = (p["chain"] + p["chain_mt"] * mt) * (CHAIN_SP24 if kernel == "w4_sp24" else 1.0) * chain_factor
    fitted = "w4a16" if tile else kernel  # the tile kernel's fitted costs are w4a16's, scaled by static SASS
    instr = p[f"base_{fitted}"] + p["chunk"] * slices * mt + p[f"mt_{fitted}"] * mt
    if tile:  # static instructions per stage against the measured w4a16 body's per group (1056 B)
        instr *= TILE_PER_KB[TILE_KEEP][splits > 1][mt] * tile_kb(TILE_KEEP) / (MEASURED_PER_KB["w4a16"][mt] * 1056 / 1024)
    elif v2:
        instr *= V2_PER_KB[kernel][splits > 1][mt] / MEASURED_PER_KB[kernel][mt]
    issue = warps * instr / ISSUE_RATE
    kb = tile_kb(TILE_KEEP) if tile else 1.0 if kernel == "w4a16" else 0.75
    hbm = warps * kb * 1024 / (HBM_GBPS * 1e3 / SMS) / halves
    # The three limits overlap imperfectly near their crossings: a smooth maximum (4-norm).
    t_iter = (chain**4 + issue**4 + hbm**4) ** 0.25
    t = p["t0"] + waves * iters * t_iter
    if splits > 1 and v2:  # slabs written, the others' read by the last CTA; the counters' memset unless kept
        memset = 0.0 if KEPT_COUNTERS else SPLIT_COUNTERS * p["t_split"]
        own = 1 if mt <= 4 else 0  # up to MT = 4 the last CTA takes its own split's sums from registers
        t += memset + (2 * splits - own) * min(m, 64) * n * 4 / (HBM_GBPS * 1e3)
    elif splits > 1:  # memset + finalize launches, and splits * M * N FP32 atomics into L2
        t += p["t_split"] + p["atomic"] * splits * min(m, 64) * n / 1e6
    return t


def gqsa_pass_rows(k: int) -> int:
    """spa_launch.cuh gqsa_pass_rows: w4_gqsa's rows per pass, 8 halved while rows x K > 100000."""
    rows = 8
    while rows > 1 and rows * k > 100000:
        rows //= 2
    return rows


def gqsa_time(k: int, n: int, m: int, g: int, p: dict[int, dict[str, float]] = GQSA, current: bool = False) -> float:
    """One call's time: of the measured kernel (passes of 8 rows), or with ``current`` of the committed
    one (passes of gqsa_pass_rows; costs scaled by gqsa_ratios, each above the L1 floor GQSA_L1_US,
    as a smooth maximum)."""
    c = dict(p[g])
    width = gqsa_pass_rows(k) if current else 8
    if current:
        entry_ratio, token_ratio = gqsa_ratios(k, g)
        for key, ratio in (("per_entry", entry_ratio), ("per_token", token_ratio)):
            c[key] = ((c[key] * ratio) ** 4 + GQSA_L1_US**4) ** 0.25
    nnz_m = 0.5 * (k // g) * n / 1e6
    t = c["t0"]
    for m0 in range(0, m, width):
        rows = min(width, m - m0)
        cliff = 1 + c["l1"] * max(0.0, rows * k / 1e5 - 1)
        t += nnz_m * (c["per_entry"] + c["per_token"] * (rows - 1)) * cliff * (g / 16)
    return t


def hbm_floor_us(kernel: str, k: int, n: int, m: int) -> float:
    """The bytes a kernel must read (goals.py weight_bytes: values, metadata, scales; plus the
    activations in and the output out) at the measured HBM bandwidth, in us: goals.py's floor."""
    return (_goals().weight_bytes(kernel, k, n) + 2 * m * (k + n)) / (HBM_GBPS * 1e3)


@functools.cache
def _sibling(stem: str) -> Any:
    """plugins/bench/<stem>.py, next to this file (a script folder, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"spa_bench_{stem}", HERE / f"{stem}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _goals() -> Any:
    """goals.py (the verdicts and the byte floors)."""
    return _sibling("goals")


def _report() -> Any:
    """model_report.py (compare, bounds); it loads this file itself."""
    return _sibling("model_report")


def resident_ctas(kernel: str, mt: int) -> int:
    """CTAs of an 8-warp kernel resident per SM (shared memory and ptxas registers; what
    cudaOccupancyMaxActiveBlocksPerMultiprocessor tells the launchers)."""
    tile = kernel == "w4_gqsa_tile"
    smem = tile_smem_bytes(TILE_KEEP, mt) if tile else smem_bytes(kernel, mt, 1)
    regs = TILE_REGS[TILE_KEEP][mt] if tile else V2_REGS[kernel][mt]
    return min(2048 // (32 * cta_warps(kernel)), SMEM_PER_SM // (smem + 1024), REGS_PER_SM // (regs * 32 * cta_warps(kernel)))


def launch_plan(kernel: str, k: int, n: int, m: int, slices: int = 0, split_k: int = 0) -> tuple[int, int, int]:
    """The launchers' plan for the current kernels: the wave rule at their occupancy."""
    mt = row_tiles(m, n)[1]
    return plan_split(min(m, 64), n // 16, k // 128, slices, split_k, ctas_per_sm=resident_ctas(kernel, mt))


def predict_row(kernel: str, k: int, n: int, m: int, g: int = 128, slices: int = 0, split_k: int = 0) -> float:
    if kernel == "w4_gqsa":
        return gqsa_time(k, n, m, g, current=True)
    s, splits, _ = launch_plan(kernel, k, n, m, slices, split_k)
    return dense_time(kernel, k, n, m, s, splits, chain_factor=CHAIN_AFTER_W2, v2=True)


# ---- calibration (coordinate descent on squared log error; stdlib only) ----

def _loss(points: list[tuple[float, Any]], time_of: Any) -> float:
    return sum(math.log(time_of(x) / us) ** 2 for us, x in points) / len(points)


def _descend(params: dict[Any, float], points: list[tuple[float, Any]], time_of: Any, rounds: int = 120) -> float:
    step = {key: 0.3 for key in params}
    best = _loss(points, time_of)
    for _ in range(rounds):
        for key in params:
            for direction in (1.0 + step[key], 1.0 / (1.0 + step[key])):
                old = params[key]
                params[key] = old * direction
                loss = _loss(points, time_of)
                if loss < best:
                    best = loss
                    break
                params[key] = old
            else:
                step[key] *= 0.6
    return best


def calibrate(results: list[Row], sweep: list[Row]) -> None:
    dense_points: list[tuple[float, Any]] = []
    for r in sweep:
        dense_points.append((r["us"], (r["kernel"], r["K"], r["N"], r["M"], r["slices"], r["split_k"])))
    params = dict(DENSE)

    def dense_of(x: Any) -> float:
        kernel, k, n, m, slices, splits = x
        return dense_time(kernel, k, n, m, slices, splits, p=params)

    loss = _descend(params, dense_points, dense_of)
    print(f"dense: rms log error {math.sqrt(loss):.3f} over {len(dense_points)} sweep cells")
    print("DENSE = {" + ", ".join(f'"{key}": {value:.3g}' for key, value in params.items()) + "}")
    for g in (16, 32):
        points = [(r["us"], (r["K"], r["N"], r["M"])) for r in results if r["kernel"] == "w4_gqsa" and r["group_size"] == g]
        gp = {g: dict(GQSA[g])}

        def gqsa_of(x: Any, g: int = g, gp: dict[int, dict[str, float]] = gp) -> float:
            k, n, m = x
            return gqsa_time(k, n, m, g, p=gp)

        flat = gp[g]
        loss = _descend(flat, points, gqsa_of)
        print(f"gqsa g={g}: rms log error {math.sqrt(loss):.3f} over {len(points)} rows")
        print(f"    {g}: " + "{" + ", ".join(f'"{key}": {value:.3g}' for key, value in flat.items()) + "},")
    # Check on rows the fit never saw: the launchers' own choices in results.json.
    checks = []
    for r in results:
        if r["kernel"] != "w4_gqsa":
            s, splits, _ = plan_split_measured(min(r["M"], 64), r["N"] // 16, r["K"] // 128)
            checks.append(abs(math.log(dense_time(r["kernel"], r["K"], r["N"], r["M"], s, splits, p=params) / r["us"])))
    checks.sort()
    print(f"dense results.json rows (launcher's choice, not fitted): median |log error| {checks[len(checks) // 2]:.3f}, "
          f"worst {checks[-1]:.3f}")


def tile_rows(dense_rows: list[Row]) -> list[Row]:
    """w4_gqsa_tile rows (TILE_KEEP of 8 groups kept) at every shape and M of the predicted w4a16 rows: each
    w4a16 prediction times the model's ratio of the two kernels, each in its launcher's plan (the w4a16 rows
    carry the sweep's anchoring). No measurement exists: measured_us and max_rel_err are null."""
    rows = []
    for r in dense_rows:
        if r["kernel"] != "w4a16":
            continue
        k, n, m = r["K"], r["N"], r["M"]
        ratio = predict_row("w4_gqsa_tile", k, n, m) / predict_row("w4a16", k, n, m)
        rows.append({**tile_row(r, r["us"] * ratio, 2), "source": "model"})
    return rows


def tile_row(row: Row, us: float, digits: int) -> Row:
    """A w4_gqsa_tile row (TILE_KEEP of 8 kept, never run: no error, no measurement) at ``row``'s
    shape and M, ``us`` rounded to ``digits``, its speedup over ``row``'s cuBLAS."""
    return {**row, "kernel": "w4_gqsa_tile", "group_size": 16, "keep": TILE_KEEP, "us": round(us, digits),
            "speedup": round(row["cublas_fp16_us"] / us, 3), "max_rel_err": None, "measured_us": None}  # fmt: skip


def predictions(measured: list[Row], sweep: list[Row]) -> list[Row]:
    """One predicted row per measured row (same kernel, shape, M, group size),
    for the kernels as committed (KERNELS). Where the sweep timed the
    configuration the launcher now chooses, the model is anchored on that
    cell: the launch cost t0 plus the cell's time beyond it, scaled by the
    model's ratio of the new kernel body to the measured one in that
    configuration (t0 excluded from both: a kernel change leaves the launch
    cost as it was), and never below t0 plus the weights' bytes at the
    measured HBM bandwidth (``hbm_floor_us``: the scaling can take a body the
    old model overpredicted past that bound) ("source": "sweep"); elsewhere the
    model alone ("model"). cuBLAS and the error are carried over from the
    measurement."""
    cells = {(r["kernel"], r["K"], r["N"], r["M"], r["slices"], r["split_k"]): r["us"] for r in sweep}
    rows = []
    for r in measured:
        kernel, k, n, m = r["kernel"], r["K"], r["N"], r["M"]
        us = predict_row(kernel, k, n, m, r.get("group_size", 128))
        cell = None
        if kernel != "w4_gqsa" and row_tiles(m, n)[0] == 1:  # the sweep never ran row halves
            slices, splits, _ = launch_plan(kernel, k, n, m)
            cell = cells.get((kernel, k, n, m, slices, splits))
            if cell is not None:  # the launch cost t0 is the same in both: only the bodies scale
                t0 = DENSE["t0"]
                us = t0 + (cell - t0) * (us - t0) / (dense_time(kernel, k, n, m, slices, splits) - t0)
                us = max(us, t0 + hbm_floor_us(kernel, k, n, m))  # never past the model's own bound
        rows.append({**r, "us": round(us, 2), "speedup": round(r["cublas_fp16_us"] / us, 3), "predicted": True,
                     "source": "sweep" if cell is not None else "model", "measured_us": r["us"]})  # fmt: skip
    if not any(r["kernel"] == "w4_gqsa_tile" for r in measured):
        rows += tile_rows(rows)
    return rows


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "predict"
    args = argv[2:]
    if command == "calibrate":
        results = json.loads(Path(args[0] if args else HERE / "results.json").read_text())
        sweep = json.loads(Path(args[1] if len(args) > 1 else HERE / "split_sweep.json").read_text())
        calibrate(results, sweep)
        return 0
    if command == "predict":
        out = HERE / "predictions.json"
        if "-o" in args:
            out = Path(args[args.index("-o") + 1])
            del args[args.index("-o") : args.index("-o") + 2]
        measured = json.loads(Path(args[0] if args else HERE / "results.json").read_text())
        sweep = json.loads(Path(args[1] if len(args) > 1 else HERE / "split_sweep.json").read_text())
        rows = predictions(measured, sweep)
        out.write_text("[\n" + ",\n".join("  " + json.dumps(r) for r in rows) + "\n]\n")
        print(f"{len(rows)} predicted rows -> {out} ({KERNELS})")
        return 0
    if command == "bounds":
        results = Path(args[0]) if args else HERE / "results.json"
        measured = json.loads(results.read_text())
        print(_report().bounds_report(measured, _goals().load_competitors(results.with_name("competitors.json"))))
        floor = results.with_name("launch_floor.json")  # a run's empty-kernel launch (run_gpu.sh writes it)
        if floor.is_file():
            grid = json.loads(floor.read_text())["empty_grid_us"]
            print(f"the measured launch floor is {grid:.2f} us: a goal whose t0 above is lower needs a shorter "
                  "launch path, not a faster kernel body")  # fmt: skip
        return 0
    if command == "compare":
        measured = json.loads(Path(args[0]).read_text())
        predicted = json.loads(Path(args[1] if len(args) > 1 else HERE / "predictions.json").read_text())
        report = _report()
        print(report.compare(measured, predicted))
        floor = Path(args[0]).with_name("launch_floor.json")  # the harness writes it beside its results
        if floor.is_file():
            print(report.launch_floor_line(json.loads(floor.read_text())))
        pdl = Path(args[0]).with_name("pdl.json")
        if pdl.is_file():
            print(report.pdl_summary(json.loads(pdl.read_text()), json.loads(floor.read_text()) if floor.is_file() else None))
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
