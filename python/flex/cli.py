"""``flex generate``: long videos from a Self Forcing checkpoint and a Wan2.1 folder, with FLEX.

    flex generate --dit checkpoints/self_forcing_dmd.pt --wan-dir Wan2.1-T2V-1.3B-Diffusers \\
        --prompt "a red fox runs through fresh snow" --seconds 30 --out fox.mp4

Everything is read from local files (nothing is downloaded). Every argument is checked before
any model is loaded. Order of work, chosen to keep peak GPU memory low: the DiT weights are
read (memory-mapped, on the CPU), the prompts are encoded and the text encoder is freed, then
the DiT and the VAE go to the device and each video is generated chunk by chunk, decoded and
written chunk by chunk (constant memory in the video length). Videos are written atomically:
an interrupted run never leaves a truncated file.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
from pathlib import Path

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
ROPE_CHOICES = ("flex", "none", "pi", "ntk", "yarn", "riflex")
FPS = 16  # Wan2.1 / Self Forcing frame rate
SPATIAL = 16  # pixels per DiT token side: VAE 8x times patch 2
# The FLEX switches whose default changes with --no-flex (upstream Self Forcing values).
NO_FLEX = {"rope": "none", "rho": 0.0, "sink_frames": 0, "window_frames": 21}


class CliError(Exception):
    """A user-facing error: printed as one message, exit status 1."""


# ---------------------------------------------------------------- arguments


def _add_generate_args(p: argparse.ArgumentParser, defaults: bool = True) -> None:
    """Arguments of ``flex generate``; ``defaults=False`` gives SUPPRESS defaults (to see what was typed)."""
    from .config import FlexConfig

    fc = FlexConfig()

    def d(value):
        return value if defaults else argparse.SUPPRESS

    io = p.add_argument_group("inputs and outputs")
    io.add_argument("--dit", required=defaults, default=d(None), metavar="CKPT",
                    help="generator checkpoint: Self Forcing / CausVid / LongLive .pt (generator_ema / "
                         "generator), a .safetensors state dict, or a Wan2.1 model folder (config.json + "
                         "diffusion_pytorch_model.safetensors, or a Diffusers transformer/ folder)")
    io.add_argument("--wan-dir", required=defaults, default=d(None), metavar="DIR",
                    help="Diffusers-format Wan2.1 folder with text_encoder/, tokenizer/ and vae/ "
                         "(e.g. Wan2.1-T2V-1.3B-Diffusers)")
    prompts = io.add_mutually_exclusive_group(required=defaults)
    prompts.add_argument("--prompt", default=d(None), metavar="TEXT", help="one text prompt")
    prompts.add_argument("--prompts", default=d(None), metavar="FILE",
                         help="text file with one prompt per line (empty lines are skipped)")
    length = io.add_mutually_exclusive_group()
    length.add_argument("--seconds", type=float, default=d(30.0),
                        help="video length in seconds at 16 fps, rounded to the nearest whole number of "
                             "chunks (latent frames = (16 * seconds + 3) / 4; 5 s = the 21 frames Self Forcing "
                             "was trained on)")
    length.add_argument("--frames", type=int, default=d(None), metavar="N",
                        help="video length in latent frames (4N - 3 video frames), rounded up to a whole "
                             "number of chunks")
    io.add_argument("--out", default=d("outputs"), metavar="PATH",
                    help="output .mp4 file (one prompt), or a folder that receives NNN-<prompt>.mp4 per "
                         "prompt; existing files are replaced atomically")
    io.add_argument("--seed", type=int, default=d(0), help="random seed; prompt i uses seed + i")
    io.add_argument("--height", type=int, default=d(480), help="video height in pixels (multiple of 16)")
    io.add_argument("--width", type=int, default=d(832), help="video width in pixels (multiple of 16)")
    io.add_argument("--crf", type=int, default=d(18), help="H.264 quality (x264 CRF, 0-51, lower is better)")

    flex = p.add_argument_group("FLEX (training-free length extension)")
    flex.add_argument("--rope", choices=ROPE_CHOICES, default=d(fc.strategy),
                      help="temporal RoPE strategy: flex (frequency-aware, the paper), none (plain Wan), "
                           "pi (position interpolation), ntk (NTK-aware base), yarn, riflex")
    flex.add_argument("--alpha", type=float, default=d(fc.alpha),
                      help="flex/yarn gate: planes with fewer training rotations than alpha are interpolated")
    flex.add_argument("--beta", type=float, default=d(fc.beta),
                      help="flex/yarn gate: planes with more training rotations than beta are left unchanged")
    flex.add_argument("--l-train", type=int, default=d(fc.l_train),
                      help="training horizon in latent frames (21 for Self Forcing, 240 for LongLive)")
    flex.add_argument("--rho", type=float, default=d(fc.rho),
                      help="antiphase noise: correlation of adjacent frames of a chunk's initial noise, "
                           "in [-1, 1] (0 = i.i.d.)")
    flex.add_argument("--sink-frames", type=int, default=d(fc.sink_frames),
                      help="first latent frames kept in the attention window forever (attention sink)")
    flex.add_argument("--window-frames", type=int, default=d(fc.window_frames),
                      help="most recent latent frames attended to, the current chunk included")
    flex.add_argument("--chunk-frames", type=int, default=d(fc.chunk_frames),
                      help="latent frames generated per chunk (3 for Self Forcing)")
    flex.add_argument("--dynamic", action="store_true", default=d(False),
                      help="let the RoPE scale grow with the current length while streaming "
                           "(keys are rotated when read)")
    flex.add_argument("--ans-renoise", action="store_true", default=d(False),
                      help="also use antiphase noise for the re-noising between denoising steps")
    flex.add_argument("--no-flex", action="store_true", default=d(False),
                      help="upstream Self Forcing: --rope none --rho 0 --sink-frames 0 --window-frames 21 "
                           "(flags given explicitly still apply)")

    model = p.add_argument_group("model")
    model.add_argument("--preset", default=d(None),
                       help="model architecture (wan2.1-t2v-1.3b, tiny); default: from config.json or "
                            "the tensor shapes")
    model.add_argument("--weights", choices=("auto", "ema", "generator"), default=d("auto"),
                       help="which weights of a training checkpoint: auto = generator_ema when present "
                            "(what Self Forcing's demo uses; the raw generator when a --lora is given)")
    model.add_argument("--lora", default=d(None), metavar="FILE",
                       help="peft-style LoRA merged into the DiT (LongLive lora.pt: use with "
                            "--l-train 240 --alpha 1 --beta 15)")
    model.add_argument("--lora-alpha", type=float, default=d(None),
                       help="LoRA alpha (scale = alpha / rank); default: alpha = rank (LongLive: 256/256)")
    model.add_argument("--lora-scale", type=float, default=d(1.0), help="extra multiplier of the LoRA delta")
    model.add_argument("--trust-checkpoint", action="store_true", default=d(False),
                       help="allow checkpoints that hold Python objects (runs pickle code: trusted files only)")
    model.add_argument("--denoising-steps", default=d("1000,750,500,250"), metavar="LIST",
                       help="Self Forcing's denoising step list (warped through the shift-5 schedule)")

    run = p.add_argument_group("runtime")
    run.add_argument("--backend", default=d("auto"),
                     help="attention kernels: auto, reference, cpp, cuda, triton, sdpa, flash")
    run.add_argument("--dtype", choices=tuple(DTYPES), default=d("bf16"),
                     help="dtype of the DiT, the text encoder and the VAE")
    run.add_argument("--device", default=d("auto"), help="torch device: auto (cuda when available), cuda, cuda:1, cpu")
    run.add_argument("--compile", choices=("off", "on", "frozen"), default=d("off"),
                     help="torch.compile each model pass: on = inductor; frozen = inductor with the weights "
                          "frozen in and autotuned GEMMs (fastest on CPU); the first chunks pay the compile time")
    run.add_argument("--cuda-graphs", action="store_true", default=d(False),
                     help="capture each model pass in a CUDA graph and replay it (CUDA only)")
    run.add_argument("--quiet", action="store_true", default=d(False), help="no progress bars")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" after every option that has a meaningful default."""

    def _get_help_string(self, action):
        if action.default is None or action.required or isinstance(action, argparse._StoreTrueAction):
            return action.help
        return super()._get_help_string(action)


def build_parser(defaults: bool = True) -> argparse.ArgumentParser:
    fmt = _HelpFormatter
    parser = argparse.ArgumentParser(
        prog="flex", formatter_class=fmt,
        description="FLEX: training-free length extension for autoregressive video diffusion "
                    "(Self Forcing on Wan2.1-T2V-1.3B).",
        argument_default=None if defaults else argparse.SUPPRESS,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    gen = sub.add_parser(
        "generate", formatter_class=fmt, help="generate videos from text prompts",
        description="Generate long videos chunk by chunk with FLEX and write them as H.264 mp4 at 16 fps.",
        epilog="example: flex generate --dit self_forcing_dmd.pt --wan-dir Wan2.1-T2V-1.3B-Diffusers "
               "--prompt 'a red fox runs through fresh snow' --seconds 30 --out fox.mp4",
    )
    _add_generate_args(gen, defaults)
    return parser


def _explicit(argv) -> set[str]:
    """Names of the generate options the user typed (parsed again with SUPPRESS defaults)."""
    ns = build_parser(defaults=False).parse_known_args(argv)[0]
    return set(vars(ns))


# ---------------------------------------------------------------- checks (no heavy work)


def read_prompts(args) -> list[str]:
    if args.prompt is not None:
        if not args.prompt.strip():
            raise CliError("--prompt is empty")
        return [args.prompt.strip()]
    path = Path(args.prompts)
    if not path.is_file():
        raise CliError(f"prompt file {str(path)!r} does not exist")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise CliError(f"prompt file {str(path)!r} is not UTF-8 text: {err}") from err
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise CliError(f"prompt file {str(path)!r} has no prompts (only empty lines)")
    return prompts


def latent_frames(args, chunk: int) -> tuple[int, str]:
    """(latent frames, sentence saying how they were chosen)."""
    if args.frames is not None:
        if args.frames < 1:
            raise CliError(f"--frames must be >= 1, got {args.frames}")
        n = math.ceil(args.frames / chunk) * chunk
        how = f"--frames {args.frames}" + (f" rounded up to {n} (whole chunks of {chunk})" if n != args.frames else "")
    else:
        if not args.seconds > 0:
            raise CliError(f"--seconds must be > 0, got {args.seconds}")
        exact = (args.seconds * FPS + 3) / 4
        n = max(1, round(exact / chunk)) * chunk
        how = f"--seconds {args.seconds:g} -> {n} latent frames ({n // chunk} chunks of {chunk})"
    return n, how


def flex_config(args, explicit: set[str]):
    from .config import FlexConfig

    values = dict(strategy=args.rope, alpha=args.alpha, beta=args.beta, l_train=args.l_train, rho=args.rho,
                  sink_frames=args.sink_frames, window_frames=args.window_frames,
                  chunk_frames=args.chunk_frames, dynamic=args.dynamic, ans_renoise=args.ans_renoise)
    if args.no_flex:
        for name, value in NO_FLEX.items():
            if name not in explicit:
                values["strategy" if name == "rope" else name] = value
    try:
        return FlexConfig(**values)
    except ValueError as err:
        raise CliError(f"invalid FLEX settings: {err}") from err


def output_paths(out: str, prompts: list[str]) -> list[Path]:
    out = Path(out)
    if out.suffix.lower() == ".mp4":
        if len(prompts) > 1:
            raise CliError(f"--out {str(out)!r} is one file but there are {len(prompts)} prompts: give a folder")
        if out.is_dir():
            raise CliError(f"--out {str(out)!r} is an existing folder, not a file")
        return [out]
    if out.suffix and not out.is_dir():
        raise CliError(f"--out must be a .mp4 file or a folder, got {str(out)!r}")
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {str(out)!r} exists and is not a folder")
    return [out / f"{i:03d}-{slug(p)}.mp4" for i, p in enumerate(prompts)]


def slug(text: str, max_len: int = 60) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return (s[:max_len].rstrip("-") or "video")


def check_wan_dir(wan_dir: str) -> Path:
    root = Path(wan_dir)
    if not root.is_dir():
        raise CliError(f"--wan-dir {str(root)!r} does not exist")
    needed = [root / "text_encoder" / "config.json", root / "tokenizer", root / "vae" / "config.json"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise CliError(
            f"--wan-dir {str(root)!r} is not a Diffusers-format Wan2.1 folder; missing: {', '.join(missing)} "
            f"(download e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers)"
        )
    return root


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise CliError(f"--device {name!r} is not a torch device: {err}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device {name!r}: CUDA is not available on this machine (use --device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise CliError(f"--device {name!r}: only {torch.cuda.device_count()} CUDA devices")
    return device


def check_args(args, explicit: set[str]) -> dict:
    """Everything that can be checked without loading a model; returns the derived settings."""
    from .ops import BACKENDS

    prompts = read_prompts(args)
    if not Path(args.dit).exists():
        raise CliError(f"--dit {args.dit!r} does not exist")
    if args.lora is not None and not Path(args.lora).is_file():
        raise CliError(f"--lora {args.lora!r} does not exist")
    wan_dir = check_wan_dir(args.wan_dir)
    for name in ("height", "width"):
        v = getattr(args, name)
        if v < SPATIAL or v % SPATIAL:
            raise CliError(f"--{name} must be a positive multiple of {SPATIAL}, got {v}")
    if not 0 <= args.crf <= 51:
        raise CliError(f"--crf must be in [0, 51], got {args.crf}")
    if args.backend not in ("auto",) + BACKENDS:
        raise CliError(f"--backend must be one of {('auto',) + BACKENDS}, got {args.backend!r}")
    try:
        steps = [float(s) for s in args.denoising_steps.split(",") if s.strip()]
    except ValueError:
        raise CliError(f"--denoising-steps must be comma-separated numbers, got {args.denoising_steps!r}") from None
    if not steps or any(not 0 < s <= 1000 for s in steps):
        raise CliError(f"--denoising-steps must be numbers in (0, 1000], got {args.denoising_steps!r}")
    if args.lora_alpha is not None and not args.lora_alpha > 0:
        raise CliError(f"--lora-alpha must be > 0, got {args.lora_alpha}")
    cfg = flex_config(args, explicit)
    frames, how = latent_frames(args, cfg.chunk_frames)
    device = resolve_device(args.device)
    if args.cuda_graphs and device.type != "cuda":
        raise CliError(f"--cuda-graphs needs a CUDA device, got --device {args.device} ({device})")
    if (args.compile != "off" or args.cuda_graphs) and cfg.dynamic and cfg.strategy == "yarn":
        raise CliError("--compile / --cuda-graphs need a fixed softmax scale, but --rope yarn with --dynamic "
                       "changes it every chunk")
    return dict(prompts=prompts, wan_dir=wan_dir, flex=cfg, frames=frames, frames_how=how,
                outputs=output_paths(args.out, prompts), device=device, steps=steps)


# ---------------------------------------------------------------- the work


def _log(msg: str) -> None:
    print(f"flex: {msg}", file=sys.stderr, flush=True)


def _peak_memory(device) -> str:
    import torch

    if device.type == "cuda":
        return f"peak CUDA memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
    try:
        import resource
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        return f"peak RSS {kib / 2**20:.2f} GiB"
    except (ImportError, AttributeError):
        return "peak memory n/a"


def _quiet_library_progress() -> None:
    """transformers / diffusers weight-loading bars would interleave with ours."""
    try:
        import transformers
        transformers.utils.logging.disable_progress_bar()
    except (ImportError, AttributeError):
        pass
    try:
        import diffusers
        diffusers.utils.logging.disable_progress_bar()
    except (ImportError, AttributeError):
        pass


def generate(args, explicit: set[str]) -> int:
    settings = check_args(args, explicit)
    import torch

    from .loading import load_dit
    from .pipeline import Pipeline
    from .text import WanTextEncoder
    from .vae import WanVAEDecoder, pixel_frames
    from .video import VideoWriter

    _quiet_library_progress()
    device, dtype = settings["device"], getattr(torch, DTYPES[args.dtype])
    cfg, frames, prompts = settings["flex"], settings["frames"], settings["prompts"]
    h, w = args.height // 8, args.width // 8
    _log(f"{len(prompts)} prompt(s); {settings['frames_how']}; {pixel_frames(frames)} frames "
         f"= {pixel_frames(frames) / FPS:.2f} s at {args.width}x{args.height}; device {device}, {args.dtype}")
    _log(f"FLEX: rope {cfg.strategy} (alpha {cfg.alpha:g}, beta {cfg.beta:g}, L_train {cfg.l_train}), "
         f"rho {cfg.rho:g}, sink {cfg.sink_frames} + window {cfg.window_frames} frames, chunk {cfg.chunk_frames}")

    # 1. DiT weights, memory-mapped on the CPU: their config tells the text length and width.
    use_ema = {"auto": None, "ema": True, "generator": False}[args.weights]
    model, info = load_dit(args.dit, args.preset, use_ema=use_ema, lora=args.lora, lora_alpha=args.lora_alpha,
                           lora_scale=args.lora_scale, trust_pickle=args.trust_checkpoint)
    mcfg = model.config
    _log(f"DiT: {info['source']} [{info['entry']}], {info['config_source']}"
         + (f", LoRA {info['lora']} merged" if "lora" in info else ""))

    # 2. Prompts -> embeddings; the text encoder is freed before the DiT goes to the device.
    text_enc = WanTextEncoder.from_pretrained(settings["wan_dir"], device, dtype, text_len=mcfg.text_len)
    if text_enc.d_model != mcfg.text_dim:
        raise CliError(f"the text encoder in {str(settings['wan_dir'])!r} gives {text_enc.d_model}-wide embeddings "
                       f"but the DiT expects text_dim {mcfg.text_dim}")
    embeddings = [text_enc.encode([p]).cpu() for p in prompts]
    del text_enc
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)

    # 3. DiT and VAE on the device.
    model = model.to(device=device, dtype=dtype)
    vae = WanVAEDecoder.from_pretrained(settings["wan_dir"], device, dtype)
    pipe = Pipeline(model, cfg, denoising_steps=settings["steps"], backend=args.backend,
                    compile={"off": False, "on": True, "frozen": "frozen"}[args.compile], cuda_graphs=args.cuda_graphs)
    n_chunks = frames // cfg.chunk_frames

    from tqdm.auto import tqdm

    for i, (prompt, emb, out) in enumerate(zip(prompts, embeddings, settings["outputs"])):
        gen = torch.Generator("cpu").manual_seed(args.seed + i)  # same noise on every device
        start = time.perf_counter()
        bar = tqdm(total=n_chunks, unit="chunk", desc=f"[{i + 1}/{len(prompts)}] {out.name}",
                   disable=args.quiet, file=sys.stderr)
        try:
            with VideoWriter(out, fps=FPS, crf=args.crf) as writer:
                stream = vae.stream()
                for latents in pipe.stream(emb, frames, (h, w), generator=gen):
                    with torch.no_grad():
                        writer.append(stream.decode(latents)[0])
                    elapsed = time.perf_counter() - start
                    bar.set_postfix(frames=writer.frames_written, fps=f"{writer.frames_written / elapsed:.2f}")
                    bar.update(1)
        finally:
            bar.close()
        elapsed = time.perf_counter() - start
        n = writer.frames_written
        print(f"{out}: {n} frames ({n / FPS:.2f} s at {FPS} fps, {frames} latent frames, {n_chunks} chunks) "
              f"in {elapsed:.1f} s = {n / elapsed:.2f} FPS (generation + VAE decode + encoding), "
              f"{_peak_memory(device)}", flush=True)
    return 0


def main(argv=None) -> int:
    """Entry point of the ``flex`` console command. Returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "generate":
            return generate(args, _explicit(argv))
        parser.error(f"unknown command {args.command!r}")
    except CliError as err:
        _log(f"error: {err}")
        return 2
    except (FileNotFoundError, RuntimeError, ValueError) as err:  # CheckpointError is a RuntimeError
        _log(f"error: {err}")
        return 1
    except KeyboardInterrupt:
        _log("interrupted (no partial video was kept)")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
