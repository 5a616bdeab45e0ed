"""The torch-free native build: CMake compiles the shared per-element math's C++ tests and, where a
CUDA compiler is found, the framework-free CUDA kernels (sm_80 / sm_90), then ctest runs the C++
tests. Proves that the CUDA sources compile and link on a machine without a GPU. Uses the
repository's build/cmake folder, as README's command does, so a rerun is incremental."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "cmake"


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_cmake_build_and_ctest():
    steps = [("configure", ["cmake", "-S", ".", "-B", str(BUILD), "-DCMAKE_BUILD_TYPE=Release"]),
             ("build", ["cmake", "--build", str(BUILD), "-j", str(os.cpu_count() or 1)]),
             ("ctest", ["ctest", "--test-dir", str(BUILD), "--output-on-failure"])]
    for name, cmd in steps:
        done = run(*cmd)
        assert done.returncode == 0, f"{name} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    assert "100% tests passed" in done.stdout
