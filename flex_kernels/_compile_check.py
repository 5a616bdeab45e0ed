"""Compile the kernels for a GPU target without a GPU (Triton front end + ptxas, no launch).

The interpreter runs the kernels' math on the CPU but skips everything the GPU compiler
checks (static types of loop-carried values, constexpr branches, tl.dot shapes, shared
memory). This tool compiles the real variants down to cubin for an sm_XX target, so a
machine without a GPU can still prove the GPU build:

    python -m flex_kernels._compile_check [--arch 90] [--quick]

TRITON_INTERPRET must not be set in this process (the kernels must be JIT functions).
Prints one line per variant; exits 1 when a variant fails to compile or when a launch
configuration needs more shared memory than the target has.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

# Shared memory per block (bytes) the kernels may use: sm_80 163 KiB, sm_90 227 KiB.
SMEM_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}


def _signature(fn, pointers: dict, scalars: dict, constexprs: dict) -> dict:
    """Every argument's type: pointers and scalars as given, the other ints i32 (Triton passes
    an int as i64 only from 2**31 on: ``scalars`` names those variants)."""
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in pointers:
            sig[name] = pointers[name]
        else:
            sig[name] = scalars.get(name, "i32")
    return sig


def _compile(fn, pointers, scalars, constexprs, arch, num_warps, num_stages):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    src = ASTSource(fn, _signature(fn, pointers, scalars, constexprs), constexprs)
    kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                            options=dict(num_warps=num_warps, num_stages=num_stages))
    return kernel.metadata.shared


def attention_variants(quick: bool):
    from flex_kernels import attention

    fn = attention._ring_attention_kernel.fn
    dtypes = ("fp16", "bf16") if quick else ("fp16", "bf16", "fp32")
    for dt in dtypes:
        for head_dim in ((128,) if quick else (32, 64, 128)):
            for rotate in (False, True):
                for causal in (False, True):
                    configs = attention._CONFIGS
                    if quick or dt == "fp32" or head_dim != 128:
                        configs = configs[:1]  # the full list once: fp16/bf16, D=128
                    for cfg in configs:
                        constexprs = dict(
                            HEAD_DIM=head_dim, CT=head_dim // 2 - 2 * (head_dim // 6), BLOCK_D=head_dim,
                            BLOCK_P=head_dim // 2, BLOCK_S=32, ROTATE=rotate, CAUSAL=causal, QFF_PTR=causal,
                            STORE_LSE=True, IEEE_DOT=dt == "fp32", **cfg.kwargs,
                        )
                        pointers = dict(q_ptr=f"*{dt}", k_ptr=f"*{dt}", v_ptr=f"*{dt}", o_ptr=f"*{dt}",
                                        lse_ptr="*fp32", sf_ptr="*i64", kf_ptr="*fp32", qff_ptr="*i64")
                        name = (f"ring_attention {dt} D={head_dim} rotate={rotate} causal={causal} "
                                f"M{cfg.kwargs['BLOCK_M']} N{cfg.kwargs['BLOCK_N']} w{cfg.num_warps} s{cfg.num_stages}")
                        # Frame scalars as Triton passes them: int64 from 2**31 on, a constexpr when 1.
                        scalars = {"qk_scale": "fp32"}
                        if causal and rotate:
                            scalars.update(q_first_frame="i64", chunk_frames="i64")
                        elif causal:
                            constexprs.update(q_first_frame=1, chunk_frames=1, s_sf=1)
                        # fp32 tiles may exceed shared memory: the autotuner skips those configs.
                        yield name, fn, pointers, scalars, constexprs, cfg.num_warps, cfg.num_stages, dt != "fp32"


def rope_variants(quick: bool):
    from flex_kernels import rope

    fn = rope._norm_rope_cache_kernel.fn
    for dt in (("fp16", "bf16") if quick else ("fp16", "bf16", "fp32")):
        for head_dim, heads in ((128, 12), (64, 2)) if not quick else ((128, 12),):
            planes = head_dim // 2
            for has_kv, norms, offset_ptr, rot_k in ((True, True, True, False), (True, False, False, True),
                                                     (False, False, True, True)):
                constexprs = dict(CT=planes - 2 * (planes // 3), CH=planes // 3, HAS_QW=norms, HAS_KW=norms,
                                  HAS_KV=has_kv, OFFSET_PTR=offset_ptr, ROT_K_T=rot_k,
                                  BLOCK_H=1 << (heads - 1).bit_length(), BLOCK_P=planes)
                pointers = {n: f"*{dt}" for n in ("q_ptr", "k_ptr", "v_ptr", "qo_ptr", "kc_ptr", "vc_ptr", "wq_ptr", "wk_ptr")}
                pointers.update(ft_ptr="*fp32", fh_ptr="*fp32", fw_ptr="*fp32", off_ptr="*i64", slot_ptr="*i32")
                for cfg in rope._CONFIGS:
                    name = (f"norm_rope_cache {dt} H={heads} D={head_dim} kv={has_kv} norms={norms} "
                            f"dev_offset={offset_ptr} rot_k_t={rot_k} w{cfg.num_warps}")
                    scalars = {"eps": "fp32"}
                    if not offset_ptr:
                        scalars["frame_offset"] = "i64"  # a host offset past 2**31
                    yield name, fn, pointers, scalars, constexprs, cfg.num_warps, cfg.num_stages, True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 80 or 90")
    parser.add_argument("--quick", action="store_true", help="a representative subset")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: the kernels must be compiled, not interpreted", file=sys.stderr)
        return 2
    limit = SMEM_LIMIT.get(args.arch, 99 * 1024)
    failures = 0
    start = time.time()
    for variants in (rope_variants(args.quick), attention_variants(args.quick)):
        for name, fn, pointers, scalars, constexprs, warps, stages, must_fit in variants:
            try:
                shared = _compile(fn, pointers, scalars, constexprs, args.arch, warps, stages)
            except Exception as err:  # noqa: BLE001 - report every failing variant
                failures += 1
                print(f"FAIL {name}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
                continue
            status = "ok  "
            if must_fit and shared > limit:
                failures += 1
                status = "SMEM"
            print(f"{status} {name}  shared={shared}")
    print(f"{failures} failure(s), sm_{args.arch}, {time.time() - start:.1f}s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
