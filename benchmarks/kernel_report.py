"""Registers, spills and shared memory of every Triton IFM kernel, compiled for a GPU
architecture without a GPU.

    python benchmarks/kernel_report.py --arch sm_90 [--json] [--dtypes fp32,tf32,bf16]
        [--kernels triton2] [--configs 1] [--jobs 2]

Each kernel of both Triton backends (``triton``: ``kernels/ifm_triton.py``,
``triton2``: ``kernels/ifm_triton2.py``) is compiled in every launch configuration
its autotuner may pick (the fixed one where there is no autotuner), for the default
dictionary (7 scales of support 3..15, 10 atoms, K=15) and 3 channels, in each
dtype: ``fp32`` (IEEE dots: torch's default matmul precision), ``tf32`` (fp32 data,
TF32 dots) and ``bf16``. The PTX goes through ``ptxas -v`` for the registers and the
spill stores and loads; shared memory is Triton's own figure. ``--json`` prints a
list of objects with the keys ``kernel``, ``config``, ``registers``,
``spill_bytes`` (spill stores plus spill loads) and ``shared_bytes``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

# compiled, not interpreted: the variable must go before triton is imported
os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DTYPES = {"fp32": ("fp32", "ieee"), "tf32": ("fp32", "tf32"), "bf16": ("bf16", "tf32")}
# arguments by name: data of the inputs' dtype, int32 tables, accumulator buffers; the rest int32
DATA = {"img", "mu", "om", "A", "out", "dx", "gmu", "gom", "gimg"}
TABLES = {"perm", "hs", "cdu", "cdv", "cring", "colr", "coln", "cneed", "chalf", "ctap"}
ACCUMULATORS = {"kbuf", "dkb", "part"}


def _arch(text: str) -> int:
    m = re.fullmatch(r"sm_(\d+)a?", text)
    if not m or int(m.group(1)) < 80:
        raise argparse.ArgumentTypeError(f"expected sm_80 or later, e.g. sm_90, got {text!r}")
    return int(m.group(1))


def _config_text(kw: dict, warps: int, stages: int, maxnreg) -> str:
    text = " ".join(f"{k}={v}" for k, v in kw.items()) + f" num_warps={warps} num_stages={stages}"
    return text + (f" maxnreg={maxnreg}" if maxnreg else "")


def jobs(dtypes, backends, first=None, arch=90) -> list[dict]:
    """Every (kernel, variant, configuration, dtype) to compile for sm_``arch``, as plain data."""
    import inik.kernels.ifm_triton as t1
    import inik.kernels.ifm_triton2 as t2

    def configs(cfgs):
        cfgs = cfgs[:first] if first else cfgs
        return [(c.kwargs, c.num_warps, c.num_stages, c.maxnreg) for c in cfgs]

    out = []
    for dname in dtypes:
        data, prec = DTYPES[dname]
        common = dict(NCB=3, KKP=256, USE_DOT=True, PREC=prec, F64=False, OFF64=False)
        v1 = dict(common, RP=8, NP=16)
        v2 = dict(common, P0=64, P1=16, MP=16)
        dot = "bfloat16" if data == "bf16" else "float32"
        atoms_v1 = t1._ATOMS_GPU_IEEE if (data == "fp32" and prec == "ieee") else t1._ATOMS_GPU
        specs = []
        if "triton" in backends:
            specs += [
                ("triton", "_fwd_kernel", "", dict(v1, STORE_K=False, DENSE=False), configs(t1._GPU_CONFIGS)),
                ("triton", "_fwd_kernel", "STORE_K", dict(v1, STORE_K=True, DENSE=False), configs(t1._GPU_CONFIGS)),
                ("triton", "_bwd_coef_kernel", "", dict(v1, NEED_MU=True, NEED_OM=True, STORE_DK=True),
                 configs(t1._COEF_GPU_CONFIGS)),
                ("triton", "_bwd_atoms_kernel", "", dict(v1, DOT_DTYPE=dot),
                 [({k: v for k, v in atoms_v1.items() if k != "num_warps"}, atoms_v1["num_warps"], 2, None)]),
                ("triton", "_bwd_image_kernel", "", dict(v1), configs(t1._IMAGE_GPU_CONFIGS)),
            ]
        if "triton2" in backends:
            specs += [
                ("triton2", "_fwd2_kernel", "", dict(v2, STORE_K=False), configs(t2.fwd_configs(arch, prec))),
                ("triton2", "_fwd2_kernel", "STORE_K", dict(v2, STORE_K=True), configs(t2.fwd_configs(arch, prec))),
                ("triton2", "_bwd2_coef_kernel", "", dict(v2, NEED_MU=True, NEED_OM=True),
                 configs(t2._COEF_GPU_CONFIGS)),
                ("triton2", "_bwd2_atoms_kernel", "", dict(v2, DOT_DTYPE=dot), configs(t2._ATOMS_GPU_CONFIGS)),
                ("triton2", "_bwd2_image_kernel", "", dict(v2), configs(t2._IMAGE_GPU_CONFIGS)),
            ]
        for backend, name, variant, consts, cfgs in specs:
            for kw, warps, stages, maxnreg in cfgs:
                out.append(dict(backend=backend, name=name, variant=variant, dtype=dname, data=data,
                                consts={**consts, **kw}, warps=warps, stages=stages, maxnreg=maxnreg,
                                config=_config_text(kw, warps, stages, maxnreg) + f", {dname}"))
    return out


def _ptxas_stats(ptx: str, arch: int) -> tuple[int, int]:
    """(registers, spill store + load bytes) of the one kernel in ``ptx``, from ``ptxas -v``."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    ptxas = get_ptxas(arch).path
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        base = [ptxas, "-v", f"--gpu-name={sm_arch_from_capability(arch)}", str(src), "-o", str(Path(tmp) / "k.o")]
        proc = subprocess.run(base[:2] + ["--regAllocOptLevel=2"] + base[2:], capture_output=True, text=True)
        if proc.returncode != 0:  # an older ptxas without the option
            proc = subprocess.run(base, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"ptxas failed: {proc.stderr.strip()[-500:]}")
    log = proc.stdout + proc.stderr
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if regs is None or spills is None:
        raise RuntimeError(f"unexpected ptxas output: {log[-500:]}")
    return int(regs.group(1)), int(spills.group(1)) + int(spills.group(2))


def compile_one(job: dict, arch: int) -> dict:
    """Compile one job for sm_``arch``; its row of the report."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    import inik.kernels.ifm_triton as t1
    import inik.kernels.ifm_triton2 as t2

    fn = getattr(t1 if job["backend"] == "triton" else t2, job["name"])
    consts = {k: v for k, v in job["consts"].items() if k in fn.arg_names}
    if "DOT_DTYPE" in consts:
        consts["DOT_DTYPE"] = getattr(triton.language, consts["DOT_DTYPE"])
    data = job["data"]
    sig = {a: "constexpr" if a in consts else f"*{data}" if a in DATA else "*i32" if a in TABLES
           else "*fp32" if a in ACCUMULATORS else "i32" for a in fn.arg_names}
    options = {"num_warps": job["warps"], "num_stages": job["stages"]}
    if job["maxnreg"]:
        options["maxnreg"] = job["maxnreg"]
    kernel = triton.compile(ASTSource(fn, sig, constexprs=consts), target=GPUTarget("cuda", arch, 32),
                            options=options)
    regs, spill = _ptxas_stats(kernel.asm["ptx"], arch)
    name = f"{job['backend']}.{job['name']}" + (f"({job['variant']})" if job["variant"] else "")
    return dict(kernel=name, config=job["config"], registers=regs, spill_bytes=spill,
                shared_bytes=int(kernel.metadata.shared))


def _one(args):
    return compile_one(*args)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=_arch, default=90, help="GPU architecture, sm_80 or later (default sm_90)")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.add_argument("--dtypes", default="fp32,tf32,bf16",
                   help="comma-separated: fp32 (IEEE dots), tf32, bf16 (default all three)")
    p.add_argument("--kernels", default="triton,triton2", help="backends whose kernels to compile "
                   "(default triton,triton2)")
    p.add_argument("--configs", type=int, default=0, help="only the first N configurations of each kernel "
                   "(default 0: all)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compiles at once (default: CPU count)")
    args = p.parse_args(argv)
    dtypes = [d for d in args.dtypes.split(",") if d]
    backends = [b for b in args.kernels.split(",") if b]
    bad = [d for d in dtypes if d not in DTYPES] + [b for b in backends if b not in ("triton", "triton2")]
    if bad or not dtypes or not backends or args.configs < 0 or args.jobs < 1:
        p.error(f"--dtypes takes {', '.join(DTYPES)}; --kernels takes triton, triton2; --configs >= 0; "
                f"--jobs >= 1 (got {', '.join(bad) or 'an empty list or a bad number'})")
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        get_ptxas(args.arch).path  # noqa: B018 (raises where ptxas is missing)
    except Exception as e:  # noqa: BLE001 - any failure to find ptxas means the report cannot be made
        print(f"kernel_report: Triton's NVIDIA backend (ptxas) is not available: {e}", file=sys.stderr)
        return 2
    todo = jobs(dtypes, backends, args.configs or None, args.arch)
    if args.jobs == 1:
        rows = [compile_one(j, args.arch) for j in todo]
    else:
        with ProcessPoolExecutor(args.jobs) as pool:
            rows = list(pool.map(_one, [(j, args.arch) for j in todo]))
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"sm_{args.arch}: registers per thread, spill stores + loads, shared memory")
    width = max(len(r["kernel"]) for r in rows)
    for r in rows:
        print(f"{r['kernel']:<{width}}  {r['config']:<52}  {r['registers']:>3} regs  "
              f"{r['spill_bytes']:>6} B spilled  {r['shared_bytes']:>6} B shared")
    spilling = sum(r["spill_bytes"] > 0 for r in rows)
    print(f"{len(rows)} compiled, {spilling} with spills")
    return 0


if __name__ == "__main__":
    sys.exit(main())
