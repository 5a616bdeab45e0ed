"""`flex selftest` (flex.selftest) in its --quick mode: every op and backend row passes on this
machine, the table lists every op, and a wrong kernel makes a FAIL row and exit status 1."""
import argparse

from flex import ops, selftest
from flex.backends import sdpa


def test_quick_selftest_passes_and_lists_every_op(capsys):
    assert selftest.main(["--quick", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "max error" in out and "FAIL" not in out
    for op in ops.OPS:
        assert op in out
    assert "model first chunk vs float64" in out and "1.3B 12x128" in out and "14B 40x128" in out


def test_wrong_kernel_fails_the_selftest(capsys, monkeypatch):
    real = sdpa.ring_attention
    monkeypatch.setattr(sdpa, "ring_attention", lambda *a: real(*a) * 1.001)
    assert selftest.main(["--quick", "--device", "cpu", "--backends", "sdpa"]) == 1
    out = capsys.readouterr().out
    assert any("sdpa" in line and "FAIL" in line for line in out.splitlines())


def test_subcommand_parser():
    parser = argparse.ArgumentParser()
    selftest.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["selftest", "--dtype", "bf16", "--quick", "--backends", "cpp,triton"])
    assert args.backends == ("cpp", "triton")
    assert args.run is selftest.run and args.dtype == "bf16" and args.quick and args.device is None
