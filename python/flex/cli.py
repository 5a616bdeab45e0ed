"""``flex generate``: long videos from a Self Forcing checkpoint and a Wan2.1 folder, with FLEX.

    flex generate --dit checkpoints/self_forcing_dmd.pt --wan-dir Wan2.1-T2V-1.3B-Diffusers \\
        --prompt "a red fox runs through fresh snow" --seconds 30 --out fox.mp4

This module only parses: the arguments become a :class:`flex.generation.GenerationSettings`
(which checks every argument and output path before any model is loaded) and
:func:`flex.generation.generate_videos` does the work. Everything is read from local files
(nothing is downloaded). A rerun skips the videos already finished with the same settings
(``--overwrite`` redoes them).

Exit status: 0 done; 1 runtime error (a model, file or device failed during the work);
2 usage error (a bad argument, reported before any model is loaded); 130 interrupted (Ctrl-C,
SIGINT); 143 terminated (SIGTERM). An interrupted or terminated run keeps no partial video.
"""
from __future__ import annotations

import argparse
import math
import sys

from .generation import (
    DTYPES, GenerationSettings, SettingsError, Terminated, generate_videos, read_prompt_file,
    terminate_as_interrupt,
)
from .generation import MODULATIONS, NOISES
from .generation import latent_frames as _latent_frames
from .pipeline import RECACHE_MODES
from .quant import QUANT_MODES
from .vae import VAES
from .presets import MODEL_PRESETS, model_preset
from .methods import METHODS, MethodError, method_settings

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143
COMPILE_CHOICES = {"off": False, "on": True, "frozen": "frozen"}
# FLEX flag dest -> FlexConfig field (the flag names follow the paper's vocabulary).
FLEX_FIELDS = {"rope": "strategy", "alpha": "alpha", "beta": "beta", "l_train": "l_train", "rho": "rho",
               "sink_frames": "sink_frames", "window_frames": "window_frames", "chunk_frames": "chunk_frames",
               "dynamic": "dynamic", "ans_renoise": "ans_renoise", "method": "method", "method_param": "method_params"}
# The FLEX switches whose default changes with --no-flex: those FlexConfig.off() changes.
NO_FLEX_FLAGS = ("rope", "rho", "sink_frames", "window_frames")


class CliError(Exception):
    """A usage error: printed as one line, exit status 2."""


def _flag(name: str) -> str:
    """The command-line flag of a setting or FLEX field (``wan_dir`` -> ``--wan-dir``, ``strategy`` -> ``--rope``)."""
    dest = {v: k for k, v in FLEX_FIELDS.items()}.get(name, name)
    return "--" + dest.replace("_", "-")


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def finite_float(text: str) -> float:
    """argparse type: a finite number (inf and nan are no length, factor or correlation)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


# ---------------------------------------------------------------- arguments


def _add_generate_args(p: argparse.ArgumentParser, defaults: bool = True) -> None:
    """Arguments of ``flex generate``; ``defaults=False`` gives SUPPRESS defaults (to see what was typed)."""
    from .config import FlexConfig
    from .ops import BACKENDS
    from .rope import STRATEGIES

    fc, off = FlexConfig(), FlexConfig.off()
    settings_defaults = GenerationSettings.__dataclass_fields__

    def d(value):
        return value if defaults else argparse.SUPPRESS

    def default(name):
        return d(settings_defaults[name].default)

    io = p.add_argument_group("inputs and outputs")
    io.add_argument("--dit", required=defaults, default=d(None), metavar="CKPT",
                    help="generator checkpoint: Self Forcing / CausVid / LongLive .pt (generator_ema / "
                         "generator), a .safetensors state dict, or a Wan2.1 model folder (config.json + "
                         "diffusion_pytorch_model.safetensors, or a Diffusers transformer/ folder)")
    io.add_argument("--wan-dir", required=defaults, default=d(None), metavar="DIR",
                    help="Wan2.1 folder with the text encoder, tokenizer and VAE: the original download "
                         "(Wan-AI/Wan2.1-T2V-1.3B: models_t5_umt5-xxl-enc-bf16.pth, google/umt5-xxl/, "
                         "Wan2.1_VAE.pth) or the Diffusers one (text_encoder/, tokenizer/, vae/)")
    io.add_argument("--vae", choices=VAES, default=default("vae"),
                    help="video decoder: the Wan folder's VAE (wan, the default) or the tiny TAEHV decoder "
                         "(tiny: many times faster, a little softer; as Self Forcing's real-time demo)")
    io.add_argument("--vae-weights", default=d(None), metavar="FILE",
                    help="the tiny decoder's weights, taew2_1.pth (or .safetensors) from madebyollin/taehv "
                         "(default: that file in --wan-dir)")
    prompts = io.add_mutually_exclusive_group(required=defaults)
    prompts.add_argument("--prompt", default=d(None), metavar="TEXT", help="one text prompt")
    prompts.add_argument("--prompts", default=d(None), metavar="FILE",
                         help="UTF-8 text file with one prompt per line (empty lines are skipped); a pipe "
                              "or - (standard input) works too")
    length = io.add_mutually_exclusive_group()
    length.add_argument("--seconds", type=finite_float, default=default("seconds"),
                        help="video length in seconds at 16 fps, rounded to the nearest whole number of "
                             "chunks (latent frames = (16 * seconds + 3) / 4; 5 s = the 21 frames Self Forcing "
                             "was trained on)")
    length.add_argument("--frames", type=int, default=d(None), metavar="N",
                        help="video length in latent frames (4N - 3 video frames), rounded up to a whole "
                             "number of chunks")
    io.add_argument("--out", default=default("out"), metavar="PATH",
                    help="output .mp4 file (one prompt), or a folder that receives NNN-<prompt>.mp4 per "
                         "prompt; each video records a hash of its settings in its metadata")
    io.add_argument("--overwrite", action="store_true", default=d(False),
                    help="regenerate videos that are already finished with the same settings (by default "
                         "they are skipped; other existing files of the same name are replaced atomically)")
    io.add_argument("--seed", type=int, default=default("seed"), help="random seed; prompt i uses seed + i")
    io.add_argument("--height", type=int, default=default("height"), help="video height in pixels (multiple of 16)")
    io.add_argument("--width", type=int, default=default("width"), help="video width in pixels (multiple of 16)")
    io.add_argument("--crf", type=int, default=default("crf"),
                    help="H.264 quality (x264 CRF, 0-51, lower is better)")

    flex = p.add_argument_group("FLEX (training-free length extension)")
    flex.add_argument("--rope", choices=(fc.strategy,) + tuple(s for s in STRATEGIES if s != fc.strategy),
                      default=d(fc.strategy),
                      help="temporal RoPE strategy: flex (frequency-aware, the paper), none (plain Wan), "
                           "pi (position interpolation), ntk (NTK-aware base), yarn, riflex")
    flex.add_argument("--alpha", type=finite_float, default=d(fc.alpha),
                      help="flex/yarn gate: planes with fewer training rotations than alpha are interpolated")
    flex.add_argument("--beta", type=finite_float, default=d(fc.beta),
                      help="flex/yarn gate: planes with more training rotations than beta are left unchanged")
    flex.add_argument("--l-train", type=int, default=d(fc.l_train),
                      help="training horizon in latent frames (21 for Self Forcing, 240 for LongLive)")
    flex.add_argument("--rho", type=finite_float, default=d(fc.rho),
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
    flex.add_argument("--method", default=d(fc.method), metavar="NAME",
                      help="long-horizon method (flex.methods.METHODS; compose with '+'), run with its paper's "
                           "settings for the flags not typed: " + ", ".join(METHODS))
    flex.add_argument("--method-param", action="append", type=_key_value, default=d(None), metavar="KEY=VALUE",
                      help="a parameter of --method (repeatable; others take the paper's defaults)")
    flex.add_argument("--no-flex", action="store_true", default=d(False),
                      help=f"upstream Self Forcing: --rope {off.strategy} --rho {off.rho:g} --sink-frames "
                           f"{off.sink_frames} --window-frames {off.window_frames} (flags given explicitly still apply)")

    model = p.add_argument_group("model")
    model.add_argument("--preset", default=d(None),
                       help="model architecture (wan2.1-t2v-1.3b, tiny); default: from config.json or "
                            "the tensor shapes")
    model.add_argument("--weights", choices=("auto", "ema", "generator"), default=default("weights"),
                       help="which weights of a training checkpoint: auto = generator_ema when present "
                            "(what Self Forcing's demo uses; the raw generator when a --lora is given)")
    model.add_argument("--lora", default=d(None), metavar="FILE",
                       help="peft-style LoRA merged into the DiT (LongLive lora.pt: use with "
                            "--l-train 240 --alpha 1 --beta 15)")
    model.add_argument("--lora-alpha", type=finite_float, default=d(None),
                       help="LoRA alpha (scale = alpha / rank); default: alpha = rank (LongLive: 256/256)")
    model.add_argument("--lora-scale", type=finite_float, default=default("lora_scale"),
                       help="extra multiplier of the LoRA delta")
    model.add_argument("--trust-checkpoint", action="store_true", default=d(False),
                       help="allow checkpoints that hold Python objects (runs pickle code: trusted files only)")
    model.add_argument("--model", choices=tuple(MODEL_PRESETS), default=default("model"),
                       help="the released model the weights are: sets its schedule (steps, shift, warp), "
                            "chunk, the weights entry it reads, FLEX's settings for it and, with --no-flex, "
                            "its own upstream baseline")
    model.add_argument("--denoising-steps", default=d(None), metavar="LIST",
                       help="denoising step list; default: the model's own, for self-forcing "
                            "(default: 1000,750,500,250), causvid 1000,757,522 (raw, shift 8)")
    model.add_argument("--shift", type=finite_float, default=d(None),
                       help="shift of the flow-matching schedule (default: the model's; Self Forcing 5, CausVid 8)")
    model.add_argument("--no-warp", action="store_true", default=d(False),
                       help="use the step list as raw timesteps instead of warping it through the shifted "
                            "table (CausVid does not warp)")
    model.add_argument("--modulation", choices=MODULATIONS, default=default("modulation"),
                       help="precision of the residual stream and modulation: fp32 (Wan's convention) or "
                            "bf16 (Self Forcing's all-bf16 generator, to reproduce it bit for bit)")

    io.add_argument("--noise", choices=NOISES, default=default("noise"),
                    help="ans: each chunk's noise drawn on the CPU (antiphase with --rho); upstream: Self "
                         "Forcing's own draws (the whole video's noise at once on the model's device and in "
                         "its dtype, re-noising with randn_like), so that with --no-flex a seed reproduces "
                         "upstream's latents")
    prompts.add_argument("--prompt-schedule", default=d(None), metavar="FILE",
                    help="a prompt schedule for the video: lines 'SECONDS: prompt' or a JSON list of "
                         "[seconds, prompt] (instead of --prompt; in a --prompts file a line may hold "
                         "'0: a cat | 5: a dog')")
    io.add_argument("--recache", choices=RECACHE_MODES, default=default("recache"),
                    help="at a prompt switch: recompute the window's cached K/V under the new prompt "
                         "(window), also the sink's (all), or keep them (none)")

    run = p.add_argument_group("runtime")
    run.add_argument("--backend", default=default("backend"),
                     help=f"attention kernels: auto, {', '.join(BACKENDS)}")
    run.add_argument("--dtype", choices=tuple(DTYPES), default=default("dtype"),
                     help="dtype of the DiT, the text encoder and the VAE")
    run.add_argument("--device", default=default("device"),
                     help="torch device: auto (cuda when available), cuda, cuda:1, cpu")
    run.add_argument("--compile", choices=tuple(COMPILE_CHOICES), default=d("off"),
                     help="torch.compile each model pass: on = inductor; frozen = inductor with the weights "
                          "frozen in and autotuned GEMMs (fastest on CPU); the first chunks pay the compile time")
    run.add_argument("--cuda-graphs", action="store_true", default=d(False),
                     help="capture each model pass in a CUDA graph and replay it (CUDA only)")
    run.add_argument("--quant", choices=QUANT_MODES, default=default("quant"),
                     help="quantise the DiT's attention-block linears through torchao: int8 (dynamic int8 "
                          "activations x int8 weights), int8-weight (weight-only), fp8 (float8 rowwise, bf16 on "
                          "Ada / Hopper GPUs); needs pip install torchao")
    run.add_argument("--quiet", action="store_true", default=d(False), help="no progress bars")
    from .distributed.cli import add_arguments as add_distributed_arguments

    add_distributed_arguments(p, defaults)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" after every option that has a meaningful default."""

    def _get_help_string(self, action):
        if action.default is None or action.required or isinstance(action, argparse._StoreTrueAction):
            return action.help
        return super()._get_help_string(action)


def build_parser(defaults: bool = True) -> argparse.ArgumentParser:
    from . import __version__

    fmt = _HelpFormatter
    parser = argparse.ArgumentParser(
        prog="flex", formatter_class=fmt,
        description="FLEX: training-free length extension for autoregressive video diffusion "
                    "(Self Forcing on Wan2.1-T2V-1.3B).",
        argument_default=None if defaults else argparse.SUPPRESS,
    )
    parser.add_argument("--version", action="version", version=f"flex {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    gen = sub.add_parser(
        "generate", formatter_class=fmt, help="generate videos from text prompts",
        description="Generate long videos chunk by chunk with FLEX and write them as H.264 mp4 at 16 fps.",
        epilog="example: flex generate --dit self_forcing_dmd.pt --wan-dir Wan2.1-T2V-1.3B-Diffusers "
               "--prompt 'a red fox runs through fresh snow' --seconds 30 --out fox.mp4    "
               "exit status: 0 done, 1 runtime error, 2 bad argument (found before any model loads), "
               "130 interrupted, 143 terminated (SIGTERM); no partial video is kept",
    )
    _add_generate_args(gen, defaults)
    from .evaluate import cli as evaluate_cli
    from .serve import cli as serve_cli

    serve_cli.add_parser(sub, defaults)
    evaluate_cli.add_parser(sub)
    return parser


def _explicit(argv) -> set[str]:
    """Names of the generate options the user typed (parsed again with SUPPRESS defaults)."""
    ns = build_parser(defaults=False).parse_known_args(argv)[0]
    return set(vars(ns))


# ---------------------------------------------------------------- arguments -> settings


def _usage_error(err: SettingsError) -> CliError:
    """The library's message with its setting names replaced by the flags that set them."""
    names, flags = " / ".join(err.fields), " / ".join(_flag(f) for f in err.fields)
    text = err.message
    return CliError(flags + text[len(names):] if text.startswith(names) else f"{flags}: {text}")


def flex_config(args, explicit: set[str]):
    """The FlexConfig of --model (FLEX on, or its upstream baseline with --no-flex) with the FLEX
    flags typed on the command line applied on top."""
    from .config import FlexConfig

    preset = model_preset(args.model)
    base = preset.baseline_config() if args.no_flex else preset.flex_config()
    values = {field: getattr(base, field) for field in FLEX_FIELDS.values()}
    typed = {field: getattr(args, dest) for dest, field in FLEX_FIELDS.items() if dest in explicit}
    try:
        if "method" in typed:  # the method's paper settings, under the flags typed
            values.update(method_settings(typed["method"]), method_params=())
        values.update(typed)
        return base.replace(**values) if isinstance(base, FlexConfig) else FlexConfig(**values)
    except ValueError as err:  # FlexConfig's messages start with the field name
        field = getattr(err, "param", None) or str(err).split(" ", 1)[0]
        field = "method_params" if isinstance(err, MethodError) and field not in values else field
        where = f" ({_flag(field)})" if field in FLEX_FIELDS.values() else ""
        raise CliError(f"invalid FLEX settings{where}: {err}") from err


def latent_frames(args, chunk: int) -> tuple[int, str]:
    """(latent frames, sentence saying how they were chosen) of --frames / --seconds."""
    try:
        return _latent_frames(args.frames, args.seconds, chunk)
    except SettingsError as err:
        raise _usage_error(err) from err


def read_prompts(args) -> tuple[tuple[str, ...], tuple | None]:
    """(prompts, schedules or None): --prompt, --prompts FILE (a line may hold a '0: a | 5: b'
    schedule) or --prompt-schedule FILE (one video)."""
    from pathlib import Path

    from .prompt_schedule import ScheduleError, parse_inline, parse_schedule

    if args.prompt is not None:
        return (args.prompt,), None
    try:
        if args.prompt_schedule is not None:
            path = Path(args.prompt_schedule)
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as err:
                raise CliError(f"--prompt-schedule {str(path)!r} cannot be read: {err}") from None
            sched = parse_schedule(text, f"--prompt-schedule {str(path)!r}")
            return (sched[0][1],), (sched,)
        lines = read_prompt_file(args.prompts)
        scheds = tuple(parse_inline(line, f"--prompts line {k + 1}") for k, line in enumerate(lines))
    except ScheduleError as err:
        raise CliError(str(err)) from None
    except SettingsError as err:
        raise _usage_error(err) from err
    if not any(scheds):
        return lines, None
    return tuple(line if sched is None else sched[0][1] for line, sched in zip(lines, scheds)), scheds


def denoising_steps(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise CliError(f"--denoising-steps must be comma-separated numbers, got {text!r}") from None


def settings_from_args(args, explicit: set[str]) -> GenerationSettings:
    """The checked settings of ``flex generate``'s arguments (CliError names the flag at fault)."""
    cfg = flex_config(args, explicit)
    prompts, schedules = read_prompts(args)
    try:
        return GenerationSettings(
            dit=args.dit, wan_dir=args.wan_dir, prompts=prompts, schedules=schedules, recache=args.recache,
            model=args.model, shift=args.shift, warp=False if args.no_warp else None,
            modulation=args.modulation, noise=args.noise, out=args.out,
            frames=args.frames, seconds=args.seconds, seed=args.seed, height=args.height, width=args.width,
            crf=args.crf, flex=cfg, preset=args.preset, weights=args.weights, lora=args.lora,
            lora_alpha=args.lora_alpha, lora_scale=args.lora_scale, trust_checkpoint=args.trust_checkpoint,
            denoising_steps=denoising_steps(args.denoising_steps), backend=args.backend, dtype=args.dtype,
            device=args.device, compile=COMPILE_CHOICES[args.compile], cuda_graphs=args.cuda_graphs,
            overwrite=args.overwrite, vae=args.vae, vae_weights=args.vae_weights, quant=args.quant,
        )
    except SettingsError as err:
        raise _usage_error(err) from err


# ---------------------------------------------------------------- entry point


def _log(msg: str) -> None:
    print(f"flex: {msg}", file=sys.stderr, flush=True)


def _print_result(result) -> None:
    print(result.summary(), flush=True)


def main(argv=None) -> int:
    """Entry point of the ``flex`` console command. Returns the exit status (see the module docstring)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)  # malformed command lines exit here, status 2
    try:
        if args.command in ("evaluate", "experiment"):
            from .evaluate import cli as evaluate_cli

            return evaluate_cli.run(args)
        if args.command == "serve":
            from .serve import cli as serve_cli

            return serve_cli.run(args, _explicit(argv))
        with terminate_as_interrupt():
            settings = settings_from_args(args, _explicit(argv))
            from .distributed.cli import run_generate, wants_distributed

            if wants_distributed(args):  # under torchrun: prompt-parallel over the ranks
                try:
                    run_generate(settings, args, log=_log, on_video=_print_result)
                except SettingsError as err:
                    raise _usage_error(err) from err
            else:
                generate_videos(settings, log=_log, on_video=_print_result, progress=not args.quiet)
    except CliError as err:
        _log(f"error: {err}")
        return EXIT_USAGE
    except Terminated:
        _log("terminated (no partial video was kept)")
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        _log("interrupted (no partial video was kept)")
        return EXIT_INTERRUPTED
    except (OSError, RuntimeError, ValueError) as err:  # CheckpointError is a RuntimeError
        _log(f"error: {err}")
        return EXIT_RUNTIME
    return EXIT_OK


__all__ = ["CliError", "build_parser", "main", "settings_from_args"]

if __name__ == "__main__":
    sys.exit(main())
