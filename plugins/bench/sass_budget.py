"""Static SASS checks of the kernels' steady-state loops (stdlib only; needs
nvcc, and cuobjdump + nvdisasm, e.g. from the PyPI wheels
nvidia-cuda-cuobjdump and nvidia-cuda-nvdisasm).

    python3 plugins/bench/sass_budget.py [--arch 90] [--json]

For every instantiation of every kernel (sm_90 cubin):
  * the steady-state loop: the loop (backward branch) holding the most math
    instructions (HMMA for w4a16 / w4_sp24 / w4_gqsa_tile; for w4_gqsa the
    innermost loop holding FFMA / HFMA2: its steps inside one column), its
    static instruction count, and from the math it holds the weight bytes
    one pass of it streams: instructions per KB of weights, the static proxy
    for the issue ceiling the H200 run measured (diagnosis.md §1, §7);
  * int-to-float conversions (I2F) in that loop (none allowed);
  * local-memory loads and stores (LDL / STL: register spills) in that loop,
    each an extra L1 round trip per pass (held to a ratchet: no more than
    today's, none where there are none);
  * every global load (LDG) in that loop whose result an instruction of the
    same iteration reads before the back edge: each is a full memory round
    trip on the loop's critical path (the scale load of the measured kernels);
  * CTAs per SM from registers (cuobjdump -res-usage) and shared memory (the
    launchers' dynamic size, mirrored in model.smem_bytes, plus static);
  * programmatic dependent launch: the kernel lets the next one start
    (griddepcontrol.launch_dependents: PREEXIT) and waits for the one before
    (griddepcontrol.wait: ACQBULK), and nothing before its first wait (in
    address order: the prologue) stores to global memory, takes an atomic
    or copies activations (a cp.async with a zero-fill source size,
    `LDGSTS ..., !Pn`: the activation copies; weights have none).
tests/test_plugins.py holds these against plugins/bench/sass_budget.json.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
KERNELS = HERE.parent / "kernels"
# Math instructions of one 128-k group per 8-token tile, and the weight bytes
# of that group per warp (16 columns): w4a16 8 x m16n8k16 over 1 KB (+ 32 B of
# scales); w4_sp24 4 x m16n8k32.sp over 512 B values + 256 B metadata (+ 32 B).
DENSE = {"w4a16": (8, 1024 + 32), "w4_sp24": (4, 768 + 32)}
# w4_gqsa_tile<KEEP, MT>: KEEP x m16n8k16 per 128-k slab and 8-token tile over
# KEEP x (128 B of fragments + 32 B of scales) + 4 B of positions per warp.
MATH = {"w4a16": ("HMMA",), "w4_sp24": ("HMMA",), "w4_gqsa": ("FFMA", "HFMA2"), "w4_gqsa_tile": ("HMMA",)}
SM90 = {"regs": 65536, "smem": 233472, "blocks": 32, "threads": 2048}


@dataclass
class Instr:
    addr: int
    opcode: str
    operands: list[str]


@dataclass
class Report:
    function: str
    kernel: str
    args: list[int]
    loop: tuple[int, int] = (0, 0)
    instructions: int = 0
    kb: float = 0.0
    ldg_consumed: list[str] = field(default_factory=list)
    i2f: int = 0  # int-to-float conversions in the loop (none wanted: the dequant is exact LOP3/HSUB2 magic)
    local: int = 0  # local-memory loads and stores in the loop (register spills)
    regs: int = 0
    smem: int = 0
    ctas_per_sm: int = 0
    pdl_waits: int = 0  # ACQBULK (griddepcontrol.wait)
    pdl_triggers: int = 0  # PREEXIT (griddepcontrol.launch_dependents)
    before_wait: list[str] = field(default_factory=list)  # what the prologue must not do before the wait

    @property
    def name(self) -> str:
        dtype = "bf16" if "bfloat16" in self.function else "fp16"
        split = ",split" if "Lb1E" in self.function else ""  # the in-kernel split-K instantiations
        return f"{self.kernel}<{dtype},{','.join(map(str, self.args))}{split}>"

    @property
    def per_kb(self) -> float:
        return self.instructions / self.kb if self.kb else float("inf")


LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")


def parse(sass: str) -> dict[str, list[Instr]]:
    """cuobjdump -sass text -> {mangled function name: instructions}."""
    functions: dict[str, list[Instr]] = {}
    current: list[Instr] | None = None
    for line in sass.splitlines():
        if "Function : " in line:
            current = functions.setdefault(line.split("Function : ")[1].strip(), [])
            continue
        match = LINE.search(line)
        if match and current is not None:
            operands = [op.strip() for op in match.group(4).split(",")] if match.group(4).strip() else []
            current.append(Instr(int(match.group(1), 16), match.group(3), operands))
    return functions


def registers(operand: str) -> set[int]:
    """General registers an operand names (R4.64 and [R4.64+0x10] name R4 and R5)."""
    found: set[int] = set()
    for number, wide in re.findall(r"\bR(\d+)(\.64)?\b", operand):
        found.add(int(number))
        if wide:
            found.add(int(number) + 1)
    return found


def load_width(opcode: str) -> int:
    return 4 if ".128" in opcode else 2 if ".64" in opcode else 1


def main_loop(body: list[Instr], math: tuple[str, ...], innermost: bool = False) -> tuple[int, int] | None:
    """(first, last) indices of the loop holding the most math instructions (innermost on ties);
    ``innermost``: of the innermost loop holding math and 16-bit loads (w4_gqsa's fast steps,
    which stream entries and their group indices, inside the loop that also holds its scan steps)."""
    index = {ins.addr: i for i, ins in enumerate(body)}
    best: tuple[int, int, int] | None = None  # (math count, -span, first) ...
    loops = []
    for i, ins in enumerate(body):
        if ins.opcode.startswith("BRA") and ins.operands:
            target = re.match(r"(?:`\(\.L_x_\d+\)|0x)([0-9a-f]+)", ins.operands[-1])
            if target and ins.operands[-1].startswith("0x"):
                start = index.get(int(target.group(1), 16))
                if start is not None and start < i:
                    loops.append((start, i))
    for start, end in loops:
        count = sum(1 for ins in body[start : end + 1] if ins.opcode.startswith(math))
        if innermost and not any(ins.opcode.startswith("LDG") and ins.opcode.endswith(".U16") for ins in body[start : end + 1]):
            continue  # w4_gqsa: a loop that streams entries loads their 16-bit group indices
        key = (0 if innermost else count, -(end - start), start)
        if count and (best is None or key > best):
            best = key
    if best is None:
        return None
    start = best[2]
    end = next(e for s, e in loops if s == start and e - s == -best[1])
    return start, end


def consumed_loads(loop: list[Instr]) -> list[str]:
    """LDGs of the loop whose destination an instruction of the same pass reads."""
    found = []
    for i, ins in enumerate(loop):
        if not (ins.opcode == "LDG" or ins.opcode.startswith("LDG.")) or not ins.operands:  # not LDGSTS (cp.async)
            continue
        first = min(registers(ins.operands[0]), default=None)
        if first is None:
            continue
        pending = set(range(first, first + load_width(ins.opcode)))
        for later in loop[i + 1 :]:
            stores = later.opcode.startswith(("ST", "RED", "ATOM", "BRA", "LDGSTS"))
            sources = later.operands if stores else later.operands[1:]
            if any(registers(op) & pending for op in sources):
                found.append(f"{ins.opcode} at {ins.addr:#x} read at {later.addr:#x} ({later.opcode})")
                break
            if not stores and later.operands:
                pending -= registers(later.operands[0])
            if not pending:
                break
    return found


def before_wait(body: list[Instr]) -> list[str]:
    """Instructions before the first griddepcontrol.wait (ACQBULK) that may touch what the
    kernel before writes or reads: global stores and atomics, and activation copies (a
    cp.async whose last operand is the zero-fill predicate). All of them when there is no wait."""
    found = []
    for ins in body:
        if ins.opcode == "ACQBULK":
            break
        store = ins.opcode.startswith(("STG", "ST.", "ATOM", "RED")) or ins.opcode == "ST"
        zero_fill = ins.opcode.startswith("LDGSTS") and bool(ins.operands) and re.fullmatch(r"!?U?P\w+", ins.operands[-1]) is not None
        if store or zero_fill:
            found.append(f"{ins.opcode} at {ins.addr:#x}")
    return found


def is_math(ins: Instr, opcodes: tuple[str, ...]) -> bool:
    """A math instruction of the loop; `HFMA2.MMA Rd, -RZ, RZ, c, c` is ptxas's
    way to load a constant (0 * 0 + c), not math."""
    if not ins.opcode.startswith(opcodes):
        return False
    return not (ins.opcode.startswith("HFMA2") and ins.operands[1:3] == ["-RZ", "RZ"])


def demangle(function: str) -> tuple[str, list[int]] | None:
    names = {"5w4a1611gemm_kernel": "w4a16", "4sp2411gemm_kernel": "w4_sp24", "4gqsa11gemv_kernel": "w4_gqsa",
             "9gqsa_tile11gemm_kernel": "w4_gqsa_tile"}
    for key, kernel in names.items():
        if key in function:
            return kernel, [int(x) for x in re.findall(r"Li(\d+)E", function)]
    return None


def weight_kb(kernel: str, args: list[int], math_count: int, index_loads: int = 0) -> float:
    """KB of weights one pass of the loop streams, from the math it holds (w4_gqsa: from its
    16-bit loads, a group index and a scale per entry and lane: its FP16 math is HFMA2 on
    pre-scaled pairs, its BF16 math FFMA, so the math does not count its entries alike)."""
    if kernel in DENSE:
        per_group, nbytes = DENSE[kernel]
        return math_count / (per_group * args[0]) * nbytes / 1024
    if kernel == "w4_gqsa_tile":
        keep, mt = args
        return math_count / (keep * mt) * (keep * 160 + 4) / 1024
    g, _rows = args
    entries = index_loads / 2 * 32  # per lane and entry: one uint16 index and one fp16 scale
    return entries * (g / 2 + 4) / 1024  # entries x (values + uint16 index + fp16 scale)


def dynamic_smem(kernel: str, args: list[int]) -> int:
    if kernel == "w4_gqsa":
        return 0
    sys.path.insert(0, str(HERE))
    import model  # the launchers' dynamic shared memory, mirrored

    if kernel == "w4_gqsa_tile":
        return model.tile_smem_bytes(args[0], args[1])
    return model.smem_bytes(kernel, args[0], args[1] if len(args) > 1 else 1)


def local_accesses(loop: list[Instr]) -> int:
    """Local-memory loads and stores (LDL, STL: register spills and their reloads) among these instructions."""
    return sum(1 for ins in loop if ins.opcode.startswith(("LDL", "STL")))


def ctas_per_sm(regs: int, smem: int, threads: int) -> int:
    regs_per_warp = ((max(regs, 1) * 32 + 255) // 256) * 256
    by_regs = SM90["regs"] // (regs_per_warp * threads // 32)
    by_smem = SM90["smem"] // (smem + 1024) if smem else SM90["blocks"]
    return min(by_regs, by_smem, SM90["blocks"], SM90["threads"] // threads)


def tools() -> tuple[str | None, str | None]:
    """nvcc and cuobjdump (with nvdisasm beside it or on PATH), or None."""
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").is_file() else None)
    candidates = [shutil.which("cuobjdump")]
    candidates += [str(p) for p in Path(sys.prefix).glob("lib/python3*/site-packages/nvidia/cu*/bin/cuobjdump")]
    for cuobjdump in filter(None, candidates):
        folder = Path(cuobjdump).parent
        if (folder / "nvdisasm").is_file() or shutil.which("nvdisasm"):
            return nvcc, cuobjdump
    return nvcc, None


def compile_cubins(folder: Path, arch: str = "90", sources: Path = KERNELS) -> dict[str, Path]:
    nvcc, _ = tools()
    if nvcc is None:
        raise FileNotFoundError("needs nvcc")
    jobs = {}
    for name in ("w4a16", "w4_sp24", "w4_gqsa", "w4_gqsa_tile"):
        cubin = folder / f"{name}.cubin"
        command = [nvcc, "-std=c++17", "-O3", f"-gencode=arch=compute_{arch},code=sm_{arch}", "-cubin",
                   str(sources / f"{name}.cu"), "-o", str(cubin)]  # fmt: skip
        jobs[name] = (cubin, subprocess.Popen(command, stderr=subprocess.PIPE, text=True))
    for _cubin, job in jobs.values():
        _, err = job.communicate()
        if job.returncode:
            raise RuntimeError(err[-3000:])
    return {name: cubin for name, (cubin, _) in jobs.items()}


def analyse(objects: dict[str, Path], arch: str = "90") -> list[Report]:
    """Reports for every kernel instantiation in the objects' sm_<arch> code (cubins or fat objects)."""
    _, cuobjdump = tools()
    if cuobjdump is None:
        raise FileNotFoundError("needs cuobjdump and nvdisasm (pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)")
    env = {**os.environ, "PATH": f"{Path(cuobjdump).parent}:{os.environ.get('PATH', '')}"}
    reports = []
    for path in objects.values():
        def dump(what: str, path: Path = path) -> str:
            command = [cuobjdump, "-arch", f"sm_{arch}", what, str(path)]
            return subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout

        sass, usage = dump("-sass"), dump("-res-usage")
        resources = dict(re.findall(r"Function (\S+):\s*\n?\s*REG:(\d+)", usage))
        shared = dict(re.findall(r"Function (\S+):\s*\n?\s*REG:\d+ STACK:\d+ SHARED:(\d+)", usage))
        for function, body in parse(sass).items():
            named = demangle(function)
            if named is None:
                continue
            kernel, args = named
            report = Report(function, kernel, args)
            loop = main_loop(body, MATH[kernel], innermost=kernel == "w4_gqsa")
            if loop is not None:
                part = body[loop[0] : loop[1] + 1]
                report.loop = (part[0].addr, part[-1].addr)
                report.instructions = sum(1 for ins in part if ins.opcode != "NOP")
                math_count = sum(1 for ins in part if is_math(ins, MATH[kernel]))
                index_loads = sum(1 for ins in part if ins.opcode.startswith("LDG") and ins.opcode.endswith(".U16"))
                report.kb = weight_kb(kernel, args, math_count, index_loads)
                report.ldg_consumed = consumed_loads(part)
                report.i2f = sum(1 for ins in part if ins.opcode.startswith("I2F"))
                report.local = local_accesses(part)
            report.pdl_waits = sum(1 for ins in body if ins.opcode == "ACQBULK")
            report.pdl_triggers = sum(1 for ins in body if ins.opcode == "PREEXIT")
            report.before_wait = before_wait(body)
            report.regs = int(resources.get(function, 0))
            report.smem = dynamic_smem(kernel, args) + int(shared.get(function, 0))
            report.ctas_per_sm = ctas_per_sm(report.regs, report.smem, 256)
            reports.append(report)
    return reports


def main(argv: list[str]) -> int:
    arch = argv[argv.index("--arch") + 1] if "--arch" in argv else "90"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            reports = analyse(compile_cubins(Path(tmp), arch), arch)
    except FileNotFoundError as error:
        print(f"SKIPPED | sass budget | {error}")
        return 0
    rows: list[dict[str, Any]] = []
    for r in sorted(reports, key=lambda r: r.name):
        rows.append({"name": r.name, "loop": [hex(a) for a in r.loop], "instructions": r.instructions,
                     "kb": round(r.kb, 3), "per_kb": round(r.per_kb, 1), "ldg_consumed": r.ldg_consumed,
                     "i2f": r.i2f, "local": r.local, "regs": r.regs, "smem": r.smem, "ctas_per_sm": r.ctas_per_sm,
                     "pdl_waits": r.pdl_waits, "pdl_triggers": r.pdl_triggers, "before_wait": r.before_wait})  # fmt: skip
        if "--json" not in argv:
            print(f"{r.name:24} loop {r.loop[0]:#06x}-{r.loop[1]:#06x} {r.instructions:5} instr / {r.kb:5.2f} KB = "
                  f"{r.per_kb:6.1f} per KB | LDG consumed in-loop: {len(r.ldg_consumed)} | I2F {r.i2f} | spills {r.local} | "
                  f"{r.regs} regs, "
                  f"{r.smem} B smem -> {r.ctas_per_sm} CTAs/SM | PDL wait {r.pdl_waits}, trigger {r.pdl_triggers}, "
                  f"{len(r.before_wait)} stores/activation copies before the wait")  # fmt: skip
    if "--json" in argv:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
