"""The options of a generation run, shared by ``flex generate`` and ``flex serve``, and their one
translation into checked :class:`flex.jobs.settings.GenerationSettings` (a :class:`CliError`
names the flag at fault; nothing is loaded)."""
from __future__ import annotations

import argparse

from ..decoders import VAES
from ..errors import SettingsError
from ..jobs.inputs import DTYPES, MODULATIONS, NOISES
from ..jobs.inputs import latent_frames as _latent_frames
from ..jobs.inputs import read_prompt_file
from ..jobs.settings import GenerationSettings
from ..presets import MODEL_PRESETS, model_preset
from ..quant import QUANT_MODES
from ..switching import RECACHE_MODES
from .common import FLEX_FIELDS, CliError, finite_float, flag, usage_error
from ..methods import METHODS, MethodError, method_settings

COMPILE_CHOICES = {"off": False, "on": True, "frozen": "frozen"}


def _key_value(text: str) -> tuple[str, str]:
    """argparse type of --method-param: KEY=VALUE."""
    key, sep, value = (part.strip() for part in text.partition("="))
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def add_generate_args(p: argparse.ArgumentParser, defaults: bool = True) -> None:
    """Arguments of ``flex generate``; ``defaults=False`` gives SUPPRESS defaults (to see what was typed)."""
    from ..config import FlexConfig
    from ..ops import BACKENDS
    from ..rope import STRATEGIES

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
                    help="a prompt schedule for the video: lines 'SECONDS: prompt' (or 'SECONDS [MODE]: "
                         "prompt', MODE one of --recache's) or a JSON list of [seconds, prompt(, mode)] "
                         "(instead of --prompt; in a --prompts file a line may hold '0: a cat | 5: a dog')")
    io.add_argument("--recache", choices=RECACHE_MODES, default=default("recache"),
                    help="what a prompt switch does to the cached K/V (default: the model's; longlive for "
                         "LongLive, else window): recompute the window's under the new prompt (window), also "
                         "the sink's (all), keep them (none), LongLive's rule (longlive: all while the switch "
                         "is within the first sink + window frames, window after), keep only the sink and the "
                         "last frame (flush: infinity-RoPE's KV Flush), or jump the temporal RoPE position to "
                         "start a new shot (cut: its RoPE Cut). A schedule line 'SECONDS [MODE]: prompt' picks "
                         "a switch's own mode. A switch at a frame takes effect at the first chunk starting at "
                         "or after it; two in one chunk are deferred one chunk each under longlive (as "
                         "LongLive does) and refused under the other modes")
    io.add_argument("--global-sink", action=argparse.BooleanOptionalAction, default=default("global_sink"),
                    help="keep the sink frames across re-encoding switches (LongLive's global_sink, default); "
                         "--no-global-sink recomputes the last sink + window frames at a switch and makes the "
                         "oldest of them the new sink")

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
    add_parallel_arguments(run, defaults)


def add_parallel_arguments(parser, defaults: bool = True) -> None:
    """The options of the many-process mode (torchrun), part of the generation options."""
    parser.add_argument("--sequence-parallel", type=int, default=1 if defaults else argparse.SUPPRESS, metavar="N",
                        help="under torchrun: ranks that generate one video together (Ulysses attention over "
                             "heads; N must divide the head count and the processes); the world is split into "
                             "groups of N that share the videos; the first rank of a group writes them")


def typed_flex_flags(args) -> set[str]:
    """The FLEX flags (--rope ... --method, --method-param) whose value differs from the parser's
    default: what counts as typed when the command line is not known (arguments parsed by a
    caller, e.g. serve_in_thread from a notebook)."""
    scratch = argparse.ArgumentParser()
    add_generate_args(scratch)
    return {dest for dest in FLEX_FIELDS if getattr(args, dest) != scratch.get_default(dest)}


def flex_config(args, explicit: set[str]):
    """The FlexConfig of --model (FLEX on, or its upstream baseline with --no-flex) with the FLEX
    flags typed on the command line applied on top."""
    from ..config import FlexConfig

    preset = model_preset(args.model)
    base = preset.baseline_config() if args.no_flex else preset.flex_config()
    values = {field: getattr(base, field) for field in FLEX_FIELDS.values()}
    typed = {field: getattr(args, dest) for dest, field in FLEX_FIELDS.items() if dest in explicit}
    try:
        if "method" in typed:  # the method's paper settings, under the flags typed
            values.update(method_settings(typed["method"]), method_params=())
        values.update(typed)
        return base.replace(**values) if isinstance(base, FlexConfig) else FlexConfig(**values)
    except SettingsError as err:  # FlexConfig's fields told as their flags, a method's parameters as theirs
        where = [flag(f) if f in FLEX_FIELDS.values() or not isinstance(err, MethodError) else f"--method-param {f}"
                 for f in err.fields]
        raise CliError(f"invalid FLEX settings ({', '.join(where)}): {err}") from err


def latent_frames(args, chunk: int) -> tuple[int, str]:
    """(latent frames, sentence saying how they were chosen) of --frames / --seconds."""
    try:
        return _latent_frames(args.frames, args.seconds, chunk)
    except SettingsError as err:
        raise usage_error(err) from err


def read_prompts(args) -> tuple[tuple[str, ...], tuple | None]:
    """(prompts, schedules or None): --prompt, --prompts FILE (a line may hold a '0: a | 5: b'
    schedule) or --prompt-schedule FILE (one video)."""
    from pathlib import Path

    from ..prompt_schedule import ScheduleError, parse_inline, parse_schedule

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
        raise usage_error(err) from err
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


def settings_from_args(args, explicit: set[str]):
    """The checked settings of ``flex generate``'s arguments (CliError names the flag at fault)."""
    cfg = flex_config(args, explicit)
    prompts, schedules = read_prompts(args)
    try:
        return GenerationSettings(
            dit=args.dit, wan_dir=args.wan_dir, prompts=prompts, schedules=schedules, recache=args.recache,
            global_sink=args.global_sink,
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
        raise usage_error(err) from err


__all__ = [
    "COMPILE_CHOICES", "add_generate_args", "add_parallel_arguments", "denoising_steps", "flex_config", "latent_frames",
    "read_prompts", "settings_from_args", "typed_flex_flags",
]
