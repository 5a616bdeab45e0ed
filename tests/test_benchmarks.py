"""The benchmark runner's quick mode: schema and completeness of its output (no speed asserted)."""
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import run  # noqa: E402


def _is_number(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    run.main(["--quick", "--device", "cpu", "--out", str(out)])
    return json.loads((out / "results.json").read_text()), out


def test_results_schema(quick_results):
    results, out = quick_results
    assert results["schema"] == run.SCHEMA_VERSION
    for key in ("date", "torch", "device", "git_commit", "backends"):
        assert key in results["machine"]
    assert _is_number(results["roofline"]["copy_gbps"]) and _is_number(results["roofline"]["matmul_tflops"])
    assert (out / "summary.md").read_text().startswith("# FLEX benchmark")
    for name in results["plots"]:
        assert (out / name).stat().st_size > 0


def test_every_op_row_has_numbers(quick_results):
    results, _ = quick_results
    ops_seen = {r["op"] for r in results["ops"]}
    assert {"rope3d", "norm_rope_cache_write", "ring_attention", "ring_attention_rotate_on_load"} <= ops_seen
    for r in results["ops"]:
        assert _is_number(r["seconds"]) and _is_number(r["rate"]) and _is_number(r["speedup_vs_upstream"]), r
        assert r["unit"] in ("GB/s", "TFLOP/s")
    for op in ops_seen:  # every op has its upstream-style baseline and at least one FLEX backend
        impls = [r["impl"] for r in results["ops"] if r["op"] == op]
        assert any(i.startswith("upstream") for i in impls) and len(impls) >= 2


def test_every_e2e_row_has_numbers(quick_results):
    results, _ = quick_results
    paths = {r["path"] for r in results["e2e"]}
    assert {"FLEX path, FLEX off", "FLEX path, FLEX on"} < paths
    # The baseline is Self Forcing's own code (with an accelerated row) when it is beside the
    # repository, else the twin, and the notes say so.
    from benchmarks.upstream_real import default_repo
    if default_repo() is not None:
        assert {"Self Forcing's code, FLEX off", "Self Forcing's code + accelerate, FLEX on"} < paths
    else:
        assert "upstream-style, FLEX off" in paths
        assert any("NOT Self Forcing's own code" in n for n in results["e2e_notes"])
    assert any(p.startswith("FLEX path, FLEX on, compile") for p in paths)
    peers = [r for r in results["e2e"] if "skipped" in r]
    assert all(r["path"].startswith("FlashDreams") and r["skipped"] for r in peers)
    for r in results["e2e"]:
        if "skipped" in r:
            continue
        assert "error" not in r, r
        for key in ("latent_fps", "video_fps", "peak_memory_mb", "warmup_seconds"):
            assert _is_number(r[key]), (key, r)
        assert r["video_frames"] == 4 * r["latent_frames"] - 3


def test_every_option_row_has_numbers(quick_results):
    results, _ = quick_results
    options = {r["option"]: r for r in results["e2e_options"]}
    assert {"eager", "compile"} <= set(options)
    for r in options.values():
        assert "error" not in r, r
        for key in ("latent_fps", "video_fps", "warmup_seconds", "speedup_vs_eager"):
            assert _is_number(r[key]), (key, r)
    assert options["eager"]["speedup_vs_eager"] == 1.0
    assert any("text encoding (T5) excluded" in n for n in results["e2e_notes"])


def test_compare_prints_ratios(quick_results):
    results, _ = quick_results
    from benchmarks import report
    text = report.compare(results, results)
    assert "1.00x" in text


def _twin_setup(batch=1):
    import torch
    from flex.config import FlexConfig
    from flex.models.wan import CausalWanModel

    from benchmarks.upstream import UpstreamStyleWan

    torch.manual_seed(0)
    model = CausalWanModel("tiny").eval()
    twin = UpstreamStyleWan.sharing_weights_of(model).eval()
    off = FlexConfig.off(window_frames=6).replace(sink_frames=3)  # 3 + 6 frames: evicts from chunk 4 on
    text = torch.randn(batch, 8, model.config.text_dim)
    return model, twin, off, text


def _video(model, config, text, **kw):
    import torch
    from flex.pipeline import Pipeline

    return Pipeline(model, config, **kw).generate(text, 18, (4, 6), generator=torch.Generator().manual_seed(1))


def test_upstream_style_twin_generates_the_same_video():
    """The benchmark's baseline is the same computation: shifting cache == ring cache, from the
    prompt embeddings (re-embedded every pass) or from a TextCache, per sample of a batch."""
    import torch

    model, twin, off, text = _twin_setup(batch=2)
    want = _video(model, off, text, backend="reference")
    with torch.no_grad():
        text_cache = model.encode_text(text)
    for prompt in (text, text_cache):
        got = _video(twin, off, prompt)
        assert torch.allclose(got, want, atol=1e-5 * want.abs().max()), (got - want).abs().max()


def test_upstream_style_twin_does_upstreams_per_pass_work(monkeypatch):
    """Counted against Self Forcing's code: the text embedding runs on every pass, the
    cross-attention K/V on the first pass of the stream only, and each layer reads its two
    cache indices back with .item() 4 times on a chunk's first pass (6 when it evicts) and 3
    times on each later pass."""
    import torch

    _, twin, off, text = _twin_setup()
    calls = {"text": 0, "cross_k": 0, "item": 0}
    twin.text_embedding.register_forward_hook(lambda *a: calls.__setitem__("text", calls["text"] + 1))
    twin.blocks[0].cross_attn.k.register_forward_hook(lambda *a: calls.__setitem__("cross_k", calls["cross_k"] + 1))
    item = torch.Tensor.item

    def counted_item(self):
        if self.shape == (1,) and self.dtype == torch.int64:  # the cache's end indices
            calls["item"] += 1
        return item(self)

    monkeypatch.setattr(torch.Tensor, "item", counted_item)
    _video(twin, off, text)
    chunks, passes, cache_frames = 6, 5, 3 + 6
    first = [6 if 3 * (c + 1) > cache_frames else 4 for c in range(chunks)]
    assert calls == {"text": chunks * passes, "cross_k": 1,
                     "item": twin.num_layers * (sum(first) + chunks * (passes - 1) * 3)}


def test_upstream_style_twin_refuses_what_upstream_cannot_do():
    import pytest
    import torch

    from benchmarks.upstream import MAX_POSITIONS

    model, twin, _, text = _twin_setup()
    cache = twin.new_cache(1, 2, 3, 3, 6)
    x = torch.zeros(1, 3, model.config.in_dim, 4, 6)
    with pytest.raises(ValueError, match="1024 positions"):
        twin(x, 0.0, text, cache, MAX_POSITIONS - 2)
    with pytest.raises(ValueError, match="new_cache"):
        twin(x, 0.0, text, model.new_cache(1, 2, 3, 3, 6), 0)
    with pytest.raises(ValueError, match="no prompt switch"):
        twin.recache(x, 0.0, text, cache, [0, 1, 2])


def test_a_failing_path_becomes_an_error_row(monkeypatch):
    """One path that cannot run (here: an unknown compile backend) must not lose the others."""
    import torch

    from benchmarks import e2e_suite

    monkeypatch.setattr(e2e_suite, "fastest_options", lambda device: ("broken", dict(compile="no_such_backend")))
    saved = []
    result = e2e_suite.run(torch.device("cpu"), torch.float32, quick=True, repeats=1, decode=False, horizons=(5,),
                           paths=("on", "fast"), options=False, on_progress=saved.append)
    rows = {r["path"]: r for r in result["rows"]}
    assert "no_such_backend" in rows["FLEX path, FLEX on, broken"]["error"]
    assert _is_number(rows["FLEX path, FLEX on"]["latent_fps"])
    assert saved and saved[-1]["rows"] == result["rows"]


def test_decode_rows_have_numbers(quick_results):
    """Both decoders' decode FPS, and each one end to end three ways (no decode, in the loop, overlapped)."""
    results, out = quick_results
    rows = {r["decoder"]: r for r in results["decode"]["decoders"]}
    assert "tiny (TAEHV)" in rows and _is_number(rows["tiny (TAEHV)"]["decode_fps"])
    for r in results["decode"]["e2e"]:
        assert "error" not in r, r
        for key in ("diffusion_video_fps", "sequential_video_fps", "overlapped_video_fps", "overlapped_of_bound"):
            assert _is_number(r[key]), (key, r)
        stats = r["overlap_vs_sequential"]
        assert stats["min"] <= stats["median"] <= stats["max"] and stats["rounds"] == 2
    assert "## Decode" in (out / "summary.md").read_text()


def test_interleaved_ratios_and_spread():
    from benchmarks.interleave import describe, interleaved, ratio

    clock = iter([1.0, 2.0, 1.0, 2.2, 1.1, 1.9])
    times = interleaved({"a": lambda: next(clock), "b": lambda: next(clock)}, rounds=3)
    assert times == {"a": [1.0, 1.0, 1.1], "b": [2.0, 2.2, 1.9]}  # in turns: a b, a b, a b
    r = ratio(times["b"], times["a"])  # per round: 2.0, 2.2, 1.727...
    assert r["median"] == 2.0 and r["max"] == 2.2 and abs(r["min"] - 1.9 / 1.1) < 1e-12
    assert r["wide"] and describe(r).endswith("!")  # a 24% spread
    broken = interleaved({"ok": lambda: 1.0, "bad": lambda: 1 / 0}, rounds=2)
    assert broken["ok"] == [1.0, 1.0] and isinstance(broken["bad"], ZeroDivisionError)


def test_model_flops_count_the_matmuls():
    """One pass of a one-layer model, counted by hand."""
    from benchmarks.flops import pass_flops
    from flex.models.config import wan_config

    cfg = wan_config("tiny", dim=16, ffn_dim=24, num_heads=2, num_layers=1, text_len=4, text_dim=4)
    t, keys = 2 * 6, 3 * 6  # 2 frames of 6 tokens; 3 resident frames
    patch = 2 * t * cfg.in_dim * 4 * 16
    block = 2 * t * 16 * 16 * 4 + 4 * t * keys * 16 + 2 * t * 16 * 16 * 2 + 4 * t * 4 * 16 + 2 * t * 16 * 24 * 2
    head = 2 * t * 16 * cfg.out_dim * 4
    assert pass_flops(cfg, 6, 2, 3) == patch + block + head
