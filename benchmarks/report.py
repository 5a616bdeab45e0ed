"""Console table, JSON, markdown summary and PNG plots of a benchmark run."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from benchmarks import fps_methodology


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _fmt_time(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms" if seconds < 1 else f"{seconds:.3f} s"


def ops_table(rows: list[dict]) -> list[list[str]]:
    table = [["op", "implementation", "time (min-max)", "rate", "of roofline", "vs upstream"]]
    for r in rows:
        spread = f" ({_fmt_time(r['seconds_min'])}-{_fmt_time(r['seconds_max'])})" if "seconds_min" in r else ""
        table.append([
            r["op"] + (f" [{r['layout']}]" if "layout" in r else ""), r["impl"], _fmt_time(r["seconds"]) + spread,
            f"{r['rate']:.2f} {r['unit']}",
            "-" if r["roofline_fraction"] is None else f"{100 * r['roofline_fraction']:.1f}%",
            "-" if r["speedup_vs_upstream"] is None else f"{r['speedup_vs_upstream']:.2f}x",
        ])
    return table


def _ok(r: dict) -> bool:
    return "error" not in r and "skipped" not in r


def _ratio(r: dict, key: str, stats_key: str) -> str:
    from benchmarks.interleave import describe

    if r.get(stats_key):
        return describe(r[stats_key])
    return "-" if r.get(key) is None else f"{r[key]:.2f}x"


def e2e_table(rows: list[dict]) -> list[list[str]]:
    table = [["horizon", "path", "latent FPS", "video FPS", "steady video FPS", "first chunk", "model TFLOP/s",
              "of roofline", "peak mem", "vs upstream (min-max)"]]
    for r in rows:
        if not _ok(r):
            why = "skipped: " + r["skipped"] if "skipped" in r else "failed: " + r["error"]
            table.append([f"{r['seconds_of_video']} s ({r['latent_frames']} latent)", r["path"],
                          "-", "", "", "", "", "", "", why])  # last: a long reason widens no other column
            continue
        table.append([
            f"{r['seconds_of_video']} s ({r['latent_frames']} latent)", r["path"], f"{r['latent_fps']:.2f}",
            f"{r['video_fps']:.2f}", f"{r['steady_video_fps']:.2f}" if r.get("steady_video_fps") else "-",
            _fmt_time(r["first_chunk_seconds"]) if r.get("first_chunk_seconds") else "-",
            f"{r['model_tflops']:.3f}" if r.get("model_tflops") else "-",
            "-" if r.get("roofline_fraction") is None else f"{100 * r['roofline_fraction']:.1f}%",
            f"{r['peak_memory_mb']:.0f} MB", _ratio(r, "speedup_vs_upstream", "speedup_stats"),
        ])
    return table


def options_table(rows: list[dict]) -> list[list[str]]:
    table = [["option (FLEX on)", "horizon", "latent FPS", "video FPS", "warm-up", "vs eager"]]
    for r in rows:
        if not _ok(r):
            table.append([r["option"], f"{r['seconds_of_video']} s", "failed: " + r["error"], "", "", ""])
            continue
        table.append([
            r["option"], f"{r['seconds_of_video']} s", f"{r['latent_fps']:.2f}", f"{r['video_fps']:.2f}",
            f"{r['warmup_seconds']:.1f} s", _ratio(r, "speedup_vs_eager", "speedup_stats"),
        ])
    return table


def decode_table(decode: dict) -> list[list[str]]:
    from benchmarks.interleave import describe

    table = [["decoder", "decode FPS", "e2e: diffusion only", "decode in the loop", "decode overlapped",
              "overlapped vs loop", "overlapped / min(diffusion, decode)"]]
    e2e = {r["decoder"]: r for r in decode.get("e2e", [])}
    for r in decode.get("decoders", []):
        if "note" in r:
            table.append([r["decoder"], r["note"], "", "", "", "", ""])
            continue
        row = [f"{r['decoder']} ({r['dtype']})", "-" if r.get("decode_fps") is None else f"{r['decode_fps']:.2f}"]
        e = e2e.get(r["decoder"])
        if e is None:
            row += ["not run", "", "", "", ""]
        elif "error" in e:
            row += ["failed: " + e["error"], "", "", "", ""]
        else:
            row += [f"{e['diffusion_video_fps']:.2f}", f"{e['sequential_video_fps']:.2f}",
                    f"{e['overlapped_video_fps']:.2f}", describe(e["overlap_vs_sequential"]),
                    f"{e['overlapped_of_bound']:.2f}"]
        table.append(row)
    return table


def quant_table(quant: dict) -> list[list[str]]:
    from benchmarks.interleave import describe

    table = [["quant (torchao)", "latent FPS", "vs none (min-max)", "x0 max |diff|", "x0 mean |diff|",
              "PSNR (tiny decoder)", "frames"]]
    for r in quant.get("rows", []):
        if "error" in r:
            table.append([r["mode"], "failed: " + r["error"], "", "", "", "", ""])
            continue
        psnr = "-" if "psnr_db" not in r else "identical" if r["psnr_db"] is None else f"{r['psnr_db']:.1f} dB"
        table.append([r["mode"], f"{r['latent_fps']['median']:.2f}", describe(r["speedup_vs_none"]),
                      f"{r['max_abs_diff']:.2e}", f"{r['mean_abs_diff']:.2e}", psnr, str(r["latent_frames"])])
    for mode, why in quant.get("skipped", {}).items():
        table.append([mode, "skipped: " + why[:80], "", "", "", "", ""])
    return table


def _text(table):
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _markdown(table):
    lines = ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
    lines += ["| " + " | ".join(row) + " |" for row in table[1:]]
    return "\n".join(lines)


def _header(results):
    m, roof = results["machine"], results["roofline"]
    head = (f"{m['date']}  device {m.get('gpu', m['device'])}  torch {m['torch']}  triton {m['triton']}  "
            f"dtype {results['dtype']}  commit {str(m['git_commit'])[:10]}")
    if roof:
        head += f"\nroofline in this run: copy {roof['copy_gbps']:.1f} GB/s, matmul {roof['matmul_tflops']:.2f} TFLOP/s"
    return head


def console_table(results: dict) -> str:
    parts = [_header(results)]
    if results["ops"]:
        parts.append(_text(ops_table(results["ops"])))
    if results.get("canary"):
        from benchmarks.canary_cost import table as canary_table

        parts.append("first-use canaries (flex.canary; off in the timings above):\n" + _text(canary_table(results["canary"])))
    if results["e2e"]:
        parts.append(_text(e2e_table(results["e2e"])))
        parts.append(fps_methodology.text())
    if results.get("e2e_options"):
        parts.append(_text(options_table(results["e2e_options"])))
    if results.get("decode", {}).get("decoders"):
        parts.append(_text(decode_table(results["decode"])))
    if results.get("quant", {}).get("rows"):
        parts.append(_text(quant_table(results["quant"])))
    warnings = [n for n in results.get("e2e_notes", []) if n.startswith("warning:")]
    if warnings:
        parts.append("\n".join(warnings))
    return "\n\n".join(parts)


def markdown(results: dict) -> str:
    parts = ["# FLEX benchmark", "```\n" + _header(results) + "\n```", f"Command: `{results['command']}`"]
    if results["ops"]:
        parts += ["## Ops", _markdown(ops_table(results["ops"]))]
    if results.get("canary"):
        from benchmarks.canary_cost import table as canary_table

        parts += ["## First-use canaries (flex.canary)", _markdown(canary_table(results["canary"])),
                  "First call of a process with FLEX_CANARY=1 (kernel + float64 reference on a slice of the call) "
                  "against the plain call; later calls go straight to the verified kernel."]
    if results["e2e"]:
        parts += ["## End to end", _markdown(e2e_table(results["e2e"])), fps_methodology.text(),
                  "Peak memory: the CUDA allocator's peak on a GPU, the process RSS on a CPU."]
    if results.get("decode", {}).get("decoders"):
        parts += ["## Decode", _markdown(decode_table(results["decode"])),
                  "Video frames per second (4 x latent - 3). Decode FPS: chunk by chunk, random weights. End to end: "
                  "one stream of the FLEX path (FLEX on, fastest options) at 5 s, three ways in turns: no decode, "
                  "decode after each chunk, decode in a worker thread during the next chunk."]
    if results.get("quant", {}).get("rows"):
        parts += ["## Quantised linear layers (flex.quant, torchao)", _markdown(quant_table(results["quant"])),
                  "Eager FLEX path (FLEX on), the modes in turns; x0: the latents of one stream against the "
                  "unquantised model's with the same noise."]
    if results.get("e2e_options"):
        parts += ["## Compile and CUDA-graph options of the FLEX path", _markdown(options_table(results["e2e_options"])),
                  "Warm-up: the seconds of a short first stream that compiles / captures every pass variant; "
                  "it is excluded from the FPS."]
    if results.get("e2e_notes"):
        parts += ["\n".join(f"- {n}" for n in results["e2e_notes"])]
    return "\n\n".join(parts) + "\n"


def plots(results: dict, out: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if results["ops"]:
        rows = [r for r in results["ops"] if r["speedup_vs_upstream"] is not None]
        fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.5))
        ax.barh([f"{r['op']}: {r['impl']}" for r in rows], [r["speedup_vs_upstream"] for r in rows])
        ax.set_xscale("log")
        ax.set_xlabel("speed-up vs upstream-style path (log)")
        fig.tight_layout()
        fig.savefig(out / "ops_speedup.png", dpi=100)
        plt.close(fig)
        written.append("ops_speedup.png")
    if results["e2e"]:
        for key, label, name in (("video_fps", "video FPS", "fps_vs_horizon.png"),
                                 ("peak_memory_mb", "peak memory (MB)", "memory_vs_horizon.png")):
            fig, ax = plt.subplots(figsize=(6, 4))
            ok = [r for r in results["e2e"] if _ok(r)]
            for path in sorted({r["path"] for r in ok}):
                pts = sorted((r["seconds_of_video"], r[key]) for r in ok if r["path"] == path)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=path)
            ax.set_xlabel("horizon (s of video)")
            ax.set_ylabel(label)
            ax.legend(fontsize=7)
            fig.tight_layout()
            fig.savefig(out / name, dpi=100)
            plt.close(fig)
            written.append(name)
    return written


def write_all(results: dict, out: Path) -> None:
    results["plots"] = plots(results, out)
    _atomic_write(out / "results.json", json.dumps(results, indent=2).encode())
    _atomic_write(out / "summary.md", markdown(results).encode())


def compare(new: dict, old: dict) -> str:
    """Ratio old time / new time (> 1: the new run is faster) for rows present in both."""
    def key(r):
        return (r["op"], r["impl"], r["shape"], r["dtype"])
    old_ops = {key(r): r for r in old.get("ops", [])}
    lines = [f"compared with the run of {old['machine']['date']} (commit {str(old['machine']['git_commit'])[:10]}):"]
    for r in new["ops"]:
        if key(r) in old_ops:
            lines.append(f"  {r['op']:<32} {r['impl']:<45} {old_ops[key(r)]['seconds'] / r['seconds']:.2f}x")
    old_e2e = {(r["path"], r["latent_frames"]): r for r in old.get("e2e", []) if _ok(r)}
    for r in new["e2e"]:
        o = old_e2e.get((r["path"], r["latent_frames"]))
        if o and _ok(r):
            lines.append(f"  e2e {r['latent_frames']} frames {r['path']:<40} {r['latent_fps'] / o['latent_fps']:.2f}x")
    return "\n".join(lines)
