"""Build of FLEX: the Python packages plus the compiled extension ``flex._C``.

The extension registers the ``torch.ops.flex.*`` operators: C++ CPU kernels always, CUDA kernels
when they can be built. Build against the torch you already have:

    MAX_JOBS=2 pip install --no-build-isolation -e .

Environment switches:
    FLEX_SKIP_CUDA=1        build the CPU kernels only
    FLEX_FORCE_CUDA=1       build the CUDA kernels even if torch or nvcc look CUDA-less
    TORCH_CUDA_ARCH_LIST    GPU architectures (default "8.0;9.0": A100, H100/H200)
    MAX_JOBS                parallel compile jobs (ninja)
"""
import os
import shutil
import sys
from glob import glob

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _want_cuda(torch, cuda_home) -> bool:
    if _env_flag("FLEX_SKIP_CUDA"):
        return False
    if _env_flag("FLEX_FORCE_CUDA"):
        return True
    if torch.version.cuda is None or cuda_home is None:
        return False
    nvcc = os.path.join(cuda_home, "bin", "nvcc.exe" if sys.platform == "win32" else "nvcc")
    return os.path.exists(nvcc)


def _locate_cuda_home() -> None:
    """Point CUDA_HOME at a toolkit with headers when it is unset.

    torch derives CUDA_HOME from the nvcc found on PATH; when that nvcc is a wrapper script
    outside the toolkit (e.g. /usr/local/bin/nvcc) the derived folder has no cuda_runtime.h.
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    for home in candidates:
        if os.path.exists(os.path.join(home, "include", "cuda_runtime.h")) and os.path.exists(
            os.path.join(home, "bin", "nvcc")
        ):
            os.environ["CUDA_HOME"] = home
            return


def _sources(pattern: str):
    # setuptools wants paths relative to the project root.
    return sorted(os.path.relpath(p, ROOT) for p in glob(os.path.join(ROOT, pattern)))


def _extensions():
    if not _env_flag("FLEX_SKIP_CUDA"):
        _locate_cuda_home()
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:  # metadata-only invocations without torch
        print("flex: torch is not importable, building without the flex._C extension", file=sys.stderr)
        return [], {}

    with_cuda = _want_cuda(torch, CUDA_HOME)
    # csrc/ops: schemas + argument checks; csrc/cpu, csrc/cuda: kernels that register themselves.
    sources = _sources("csrc/*.cpp") + _sources("csrc/ops/*.cpp") + _sources("csrc/cpu/*.cpp")
    sources += _sources("csrc/cpu/attention/*.cpp")
    cxx_flags = ["-O3", "-fno-trapping-math"]
    link_flags = []
    if sys.platform.startswith("linux"):
        # at::parallel_for is OpenMP in the torch wheels; without -fopenmp it runs serially.
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    macros = []
    kwargs = {}
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        sources += _sources("csrc/cuda/*.cpp") + _sources("csrc/cuda/*.cu")
        macros.append(("FLEX_WITH_CUDA", None))
        kwargs["extra_compile_args"] = {"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++17"]}
        ext_cls = CUDAExtension
    else:
        kwargs["extra_compile_args"] = {"cxx": cxx_flags}
        ext_cls = CppExtension
    print(f"flex: building flex._C with {'CPU + CUDA' if with_cuda else 'CPU'} kernels", file=sys.stderr)
    ext = ext_cls(
        name="flex._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc", "include"), os.path.join(ROOT, "csrc")],
        define_macros=macros,
        extra_link_args=link_flags,
        **kwargs,
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


def _packages():
    packages = find_packages(where="python")
    package_dir = {"": "python"}
    if os.path.isdir(os.path.join(ROOT, "flex_kernels")):
        packages.append("flex_kernels")
        packages += ["flex_kernels." + p for p in find_packages(where=os.path.join(ROOT, "flex_kernels"))]
        package_dir["flex_kernels"] = "flex_kernels"
    return packages, package_dir


ext_modules, cmdclass = _extensions()
packages, package_dir = _packages()

setup(
    name="flex-video",
    packages=packages,
    package_dir=package_dir,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
