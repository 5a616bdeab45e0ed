"""flex.speed_notes: options measured slower than the default warn on the device class they were
measured on, with the recorded ratio (checked against the committed benchmark results)."""
import json
from pathlib import Path

import pytest

from flex import speed_notes

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
AVX2 = {"avx2", "fma"}
VNNI = AVX2 | {"avx512f", "avx512_vnni"}
AMX = VNNI | {"amx_int8", "amx_bf16"}


def test_device_classes():
    assert speed_notes.device_class("cpu", AVX2) == "cpu-avx2"
    assert speed_notes.device_class("cpu", VNNI) == "cpu-vnni"
    assert speed_notes.device_class("cpu", AMX) == "cpu-amx"
    assert speed_notes.device_class("cuda:0", AVX2) == "cuda"
    with pytest.raises(ValueError, match="device"):
        speed_notes.device_class("meta")


def test_int8_warns_where_measured_slower_only():
    (line,) = speed_notes.warnings_for({"quant": "int8", "compile": True}, "cpu", AVX2)
    assert line.startswith("quant=int8 runs at 0.07x the default's speed on a CPU with AVX2 only")
    assert "benchmarks/run.py --suite quant" in line
    assert "0.78x" in speed_notes.warnings_for({"quant": "int8"}, "cpu", VNNI)[0]
    assert speed_notes.warnings_for({"quant": "int8"}, "cpu", AMX) == []
    assert speed_notes.warnings_for({"quant": None}, "cpu", AVX2) == []
    assert speed_notes.warnings_for({}, "cuda") == []


def test_table_rows_are_slower_and_match_recorded_results():
    for row in speed_notes.SLOWER:
        assert row.device_class in speed_notes.DEVICE_CLASSES and 0 < row.ratio < 1
    recorded = json.loads((RESULTS / "2026-12-02-cpu-2core-fp32" / "results.json").read_text())
    measured = {r["mode"]: r["speedup_vs_none"]["median"] for r in recorded["quant"]["rows"]}
    for row in speed_notes.SLOWER:
        if "2026-12-02-cpu-2core-fp32" in row.measured:
            assert row.ratio == pytest.approx(measured[row.value], abs=0.005)


def test_every_entry_point_says_when_an_option_is_slower_here(tmp_path, capsys, monkeypatch):
    """The runtime every entry point loads logs the note: flex generate with --quant int8 on an AVX2 CPU."""
    pytest.importorskip("torchao")
    from tiny_assets import make_dit_checkpoint, make_wan_dir

    import flex.speed_notes
    from flex import cli

    monkeypatch.setattr(flex.speed_notes, "_cpu_flags", lambda: {"avx2"})
    code = cli.main(["generate", "--dit", str(make_dit_checkpoint(tmp_path / "tiny.pt")), "--wan-dir",
                     str(make_wan_dir(tmp_path / "wan")), "--prompt", "a cat", "--out", str(tmp_path / "v.mp4"),
                     "--height", "32", "--width", "32", "--frames", "3", "--dtype", "fp32", "--device", "cpu",
                     "--quiet", "--preset", "tiny", "--quant", "int8"])
    err = capsys.readouterr().err
    assert code == 0 and "note: quant=int8 runs at 0.07x the default's speed" in err
