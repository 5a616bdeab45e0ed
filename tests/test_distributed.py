"""flex.jobs.distributed and flex.sequence_parallel on the CPU (gloo): sequence-parallel latents equal single-process latents,
prompt-parallel batches equal a one-rank run, and a killed rank loses only its current video.

The multi-process runs are started by the tests, with torchrun (``python -m
torch.distributed.run``) or, where a rank must outlive a dead peer, as plain processes given
torchrun's environment; the programs they run are in ``distributed_worker.py``.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distributed_worker import SEQUENCE_CASES, sequence_case
from tiny_assets import make_dit_checkpoint, make_wan_dir
from flex.sequence_parallel import ParallelPlan
from flex.jobs.distributed.launch import Launch, rank_device, sequence_groups
from flex.jobs.distributed.work import Manifest, WorkItem, pending_items, share
from flex.jobs import GenerationSettings, generate_videos
from flex.models.wan import CausalWanModel
from flex.pipeline import Pipeline

TESTS = Path(__file__).parent
WORKER = str(TESTS / "distributed_worker.py")
PROMPTS = ("a cat runs on the beach", "a dog jumps in snow", "a red car in the city at night",
           "waves over the ocean at sunset", "a bird flies over the forest")
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}

pytestmark = pytest.mark.usefixtures("one_thread")


def _env(**extra) -> dict:
    root = TESTS.parent
    path = os.pathsep.join([str(root / "python"), str(root), str(TESTS), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **extra}


def torchrun(*args, nproc=2, timeout=240, **popen):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout, **popen)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- sequence parallel


def test_sequence_parallel_latents_equal_single_process(tmp_path):
    out = tmp_path / "sp.pt"
    run = torchrun(WORKER, "sequence", str(out))
    assert run.returncode == 0, run.stderr[-3000:]
    got = torch.load(out, weights_only=True)
    for case in SEQUENCE_CASES:
        want, heads = sequence_case(case, compiled=False)  # this process alone, eager
        assert got["heads"][case] == heads // 2, "each rank's ring caches hold half of the heads"
        assert got[case].dtype == want.dtype and got[case].shape == want.shape
        err = (got[case] - want).abs().max().item()
        assert err <= TOLERANCE[want.dtype], f"{case}: max |sequence parallel - single| = {err}"


def test_sequence_parallel_size_must_divide_heads_and_frame_tokens():
    model = CausalWanModel("tiny")  # 2 heads
    with pytest.raises(ValueError, match="sequence parallel size 3 must divide the model's 2 heads"):
        Pipeline(model, parallel=ParallelPlan(3, 0))
    with pytest.raises(ValueError, match="parallel must be a flex.sequence_parallel.ParallelPlan"):
        Pipeline(model, parallel=2)
    from flex.sequence_parallel import check_parallel

    with pytest.raises(ValueError, match="sequence parallel does not run under cuda_graphs"):
        check_parallel(ParallelPlan(2, 0), model, cuda_graphs=True)  # Pipeline checks the device first
    Pipeline(model, parallel=ParallelPlan(2, 0), compile=True)  # the compiled pass traces the exchanges
    pipe = Pipeline(model, parallel=ParallelPlan(2, 0))
    with pytest.raises(ValueError, match="must divide the 1 tokens of a latent frame"):
        pipe.stream(torch.randn(1, 4, 32), 3, (2, 2))  # a 1 x 1 token grid
    with pytest.raises(ValueError, match="rank must be an int in"):
        ParallelPlan(2, 2)
    with pytest.raises(ValueError, match="must divide the number of processes"):
        sequence_groups(Launch(0, 3, 0, 3), 2)


# ---------------------------------------------------------------- launch and work items


def test_launch_reads_torchrun_environment():
    assert Launch.from_env({}) == Launch(0, 1, 0, 1)
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert Launch.from_env(env) == Launch(3, 4, 1, 2)
    assert Launch.from_env({"WORLD_SIZE": "2"}) == Launch(0, 2, 0, 2)  # the rest defaults to one node
    with pytest.raises(ValueError, match="RANK .4. must lie in"):
        Launch.from_env({**env, "RANK": "4"})
    with pytest.raises(ValueError, match="LOCAL_RANK must be an int"):
        Launch.from_env({**env, "LOCAL_RANK": "x"})
    assert rank_device(Launch(3, 4, 1, 2), "cpu") == torch.device("cpu")


def test_shares_are_equal_and_cover_every_item_once():
    for n in range(12):
        for world in range(1, 5):
            shares = [share(list(range(n)), r, world) for r in range(world)]
            assert sorted(x for s in shares for x in s) == list(range(n))
            assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_manifest_skips_torn_lines_and_records_unrecorded_videos(tmp_path):
    items = [WorkItem(i, f"p{i}", i, "default", f"key{i}", f"v{i}.mp4") for i in range(4)]
    manifest = Manifest(tmp_path / "manifest.jsonl")
    manifest.append(items[0], 0, 1.5)
    with open(manifest.path, "ab") as f:
        f.write(b'{"key": "key1", "ind')  # a writer killed mid-line
    manifest.append(items[2], 1, 2.0)  # starts on a fresh line
    assert [r["key"] for r in manifest.records()] == ["key0", "key2"]
    # Videos 0, 1 and 2 are complete; 1 has no record (its rank died before writing it).
    todo = pending_items(items, manifest, lambda it: it.index < 3)
    assert todo == [items[3]]
    assert sorted(r["key"] for r in manifest.records()) == ["key0", "key1", "key2"]
    assert pending_items(items, manifest, lambda it: True, overwrite=True) == items


# ---------------------------------------------------------------- prompt parallel


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist-assets")
    wan, dit = make_wan_dir(root / "wan"), make_dit_checkpoint(root / "dit.pt")
    settings = dict(dit=str(dit), wan_dir=str(wan), prompts=list(PROMPTS), frames=3, height=64, width=96,
                    dtype="fp32", device="cpu")
    one = GenerationSettings(**{**settings, "prompts": PROMPTS, "out": str(root / "one-rank")})
    generate_videos(one, progress=False)  # the reference: one process, the whole list
    return {"root": root, "settings": settings, "reference": {p.name: p.read_bytes() for p in one.outputs}}


def _job(assets, out: Path) -> Path:
    path = out.parent / f"{out.name}.json"
    path.write_text(json.dumps({**assets["settings"], "out": str(out)}))
    return path


def _videos(out: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.mp4"))}


def _keys(out: Path) -> list:
    return [r["key"] for r in Manifest(out / "manifest.jsonl").records()]


def test_two_ranks_make_the_videos_of_one_rank(assets, tmp_path):
    out = tmp_path / "two-ranks"
    run = torchrun(WORKER, "generate", str(_job(assets, out)))
    assert run.returncode == 0, run.stderr[-3000:]
    assert _videos(out) == assets["reference"]  # same seeds -> same latents -> same bytes
    records = Manifest(out / "manifest.jsonl").records()
    assert sorted(r["index"] for r in records) == [0, 1, 2, 3, 4]
    assert {r["rank"] for r in records} == {0, 1} and all(r["seconds"] > 0 for r in records)
    assert "5/5 videos done" in run.stderr  # rank 0's progress of every rank


def test_killed_rank_loses_only_its_current_video(assets, tmp_path):
    out = tmp_path / "killed"
    job = _job(assets, out)
    # Rank 1 (videos 1 and 3) dies while writing video 3; rank 0 (0, 2, 4) finishes its share.
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, WORKER, "generate", str(job), "1", "1"], stderr=subprocess.PIPE,
                              text=True, env=_env(RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r),
                                                  LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                                                  MASTER_PORT=str(port)))
             for r in range(2)]
    errors = [p.communicate(timeout=240)[1] for p in procs]
    assert procs[1].returncode == -9
    assert procs[0].returncode == 3 and "did not finish its share" in errors[0], errors[0][-3000:]
    names = sorted(assets["reference"])
    assert sorted(_videos(out)) == [names[i] for i in (0, 1, 2, 4)]
    assert sorted(_keys(out)) == sorted(set(_keys(out))) and len(_keys(out)) == 4
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.mp4")}

    # The rerun, with another number of ranks (one), makes video 3 only.
    from flex.jobs.distributed.job import run_generate

    settings = GenerationSettings(**{**assets["settings"], "prompts": PROMPTS, "out": str(out)})
    results = run_generate(settings, progress_interval_s=0.5)
    assert [r.index for r in results if not r.skipped] == [3]
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.mp4") if p.name in before} \
        == before  # nothing finished was redone
    assert _videos(out) == assets["reference"] and not list(out.glob("*.part"))
    assert sorted(_keys(out)) == sorted(set(_keys(out))) and len(_keys(out)) == 5  # none missing or twice


def test_torchrun_restart_resumes_without_duplicates(assets, tmp_path):
    out = tmp_path / "restarted"
    # Rank 1 dies on its second video; torchrun stops rank 0 and restarts both, which finish.
    run = torchrun("--max-restarts=1", WORKER, "generate", str(_job(assets, out)), "1", "1")
    assert run.returncode == 0, run.stderr[-3000:]
    assert _videos(out) == assets["reference"]
    assert sorted(_keys(out)) == sorted(set(_keys(out))) and len(_keys(out)) == 5


def test_sequence_parallel_job_makes_the_videos_of_one_rank(assets, tmp_path):
    """torchrun -m flex generate --sequence-parallel 2: both ranks make every video together, the
    first one writes it; the frames equal the one-process videos up to float rounding."""
    from flex.video import read_video

    out = tmp_path / "sequence-parallel"
    run = torchrun(WORKER, "generate", str(_job(assets, out)), "-", "-", "2")
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(_videos(out)) == sorted(assets["reference"])
    records = Manifest(out / "manifest.jsonl").records()
    assert sorted(r["index"] for r in records) == [0, 1, 2, 3, 4] and {r["rank"] for r in records} == {0}
    reference = assets["root"] / "one-rank"
    names = sorted(assets["reference"])
    for k, name in enumerate(names):
        got, want = read_video(out / name).astype(int), read_video(reference / name).astype(int)
        other = read_video(reference / names[k - 1]).astype(int)  # another prompt and seed
        assert got.shape == want.shape
        # The same latents to ~1e-6, but a pixel may cross a uint8 step and x264 codes the
        # frame a little differently: a fraction of a level on average, where another video
        # differs by many levels.
        assert abs(got - want).mean() < 0.5 < 5 < abs(got - other).mean(), name


def test_cli_arguments_and_sequence_parallel_rules(monkeypatch):
    import argparse

    from flex.cli.args import add_parallel_arguments as add_arguments
    from flex.errors import SettingsError
    from flex.jobs.distributed.job import check_sequence_parallel, wants_distributed

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--sequence-parallel", "2"])
    assert args.sequence_parallel == 2 and wants_distributed(args)
    quiet = argparse.ArgumentParser()
    add_arguments(quiet, defaults=False)
    assert vars(quiet.parse_args([])) == {}
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not wants_distributed(parser.parse_args([]))
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert wants_distributed(parser.parse_args([]))
    with pytest.raises(SettingsError, match="must divide the number of processes"):
        check_sequence_parallel(2, Launch(0, 3, 0, 3))
    assert check_sequence_parallel(2, Launch(0, 2, 0, 2)) == 2
    assert check_sequence_parallel(1, Launch(0, 2, 0, 2)) == 1
    graphs = argparse.Namespace(compile=True, cuda_graphs=True)
    with pytest.raises(SettingsError, match="cuda_graphs"):
        check_sequence_parallel(2, Launch(0, 2, 0, 2), graphs)
    assert check_sequence_parallel(1, Launch(0, 2, 0, 2), graphs) == 1
    assert check_sequence_parallel(2, Launch(0, 2, 0, 2), argparse.Namespace(compile=True, cuda_graphs=False)) == 2
