"""Build and install inik.

The Triton kernels live in ``kernels/`` and install as ``inik.kernels`` (a PyPI
package is already called ``kernels``).

The compiled extension ``inik._C`` (``csrc/``: the IFM's CPU and CUDA kernels,
the fused ConvLSTM update and the Winograd convolution for CPUs) is built when torch is
importable at build time; install with ``pip install --no-build-isolation -e .``
so the build sees the installed torch. The build's environment variables
(``INIK_NO_EXTENSION``, ``INIK_BUILD_CUDA``, ``INIK_CPU_NATIVE``,
``INIK_REQUIRE_EXTENSION``) are declared in ``inik/settings.py`` and listed in
``docs/configuration.md``; ``MAX_JOBS`` and ``TORCH_CUDA_ARCH_LIST`` are torch's.
"""

import importlib.util
import os
import sys

from setuptools import find_packages, setup


def _load_settings():
    """inik/settings.py on its own (importing the package would import torch and inik._C)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "inik", "settings.py")
    spec = importlib.util.spec_from_file_location("inik_build_settings", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up while the file runs
    spec.loader.exec_module(module)
    return module


settings = _load_settings()

def _say(msg: str) -> None:
    print(f"inik setup: {msg}", file=sys.stderr)


def _cudart_dirs(cuda_home: str) -> list:
    """Extra library dirs holding libcudart.so when CUDA_HOME/lib64 has none (torch
    derives CUDA_HOME from the nvcc on PATH, which may be a wrapper script)."""
    import glob

    if os.path.exists(os.path.join(cuda_home, "lib64", "libcudart.so")):
        return []
    for d in [os.path.join(cuda_home, "lib"), *sorted(glob.glob("/usr/local/cuda*/lib64")),
              *sorted(glob.glob("/usr/local/cuda*/lib"))]:
        if os.path.exists(os.path.join(d, "libcudart.so")):
            return [d]
    return []


def _build_ext_class(base):
    """torch's BuildExtension made forgiving: see INIK_REQUIRE_EXTENSION above."""

    class BuildExt(base):
        def run(self):
            try:
                super().run()
            except Exception as exc:  # a missing or broken compiler, a compile or link error
                if settings.get("INIK_REQUIRE_EXTENSION"):
                    raise
                lines = str(exc).strip().splitlines()
                cuda = any(src.endswith(".cu") for ext in self.extensions for src in ext.sources)
                _say(f"WARNING: building inik._C failed ({type(exc).__name__}: {lines[-1] if lines else ''}); "
                     "installing without it: inik then runs on the pure PyTorch reference, several times "
                     "slower on a CPU. "
                     + ("INIK_BUILD_CUDA=0 builds the CPU kernels alone. " if cuda else "")
                     + "The compiler's output is above; INIK_REQUIRE_EXTENSION=1 makes this an error.")
                self._remove_stale_outputs()
                self.extensions = []

        def _remove_stale_outputs(self):
            """An inik._C left by an earlier build (in the build folder, or in the source tree
            for an editable install) no longer matches the sources: install without it."""
            source_tree = os.path.dirname(os.path.abspath(__file__))
            for ext in self.extensions:
                name = self.get_ext_filename(ext.name)
                for stale in {os.path.join(self.build_lib, name), os.path.join(source_tree, name)}:
                    if os.path.exists(stale):
                        os.remove(stale)
                        _say(f"removed {stale}, left by an earlier build")

        def get_outputs(self):  # an extension that was not built is not an output to install
            return [out for out in super().get_outputs() if os.path.exists(out)]

    return BuildExt


def _extension_build():
    """(ext_modules, cmdclass) for inik._C, or ([], {}) when it is not built."""
    if settings.get("INIK_NO_EXTENSION"):
        _say("INIK_NO_EXTENSION=1: building no extension; inik.ops.ifm uses the PyTorch reference")
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        _say("torch is not importable at build time: building no extension (install torch first, then "
             "reinstall with `pip install --no-build-isolation -e .` to build inik._C)")
        return [], {}

    here = os.path.dirname(os.path.abspath(__file__))
    csrc = "csrc"
    # torch adds the C++ standard it needs; -Wno-psabi: vector types never cross a call boundary.
    # -fopenmp: at::parallel_for is OpenMP inside our own object code (Apple clang has none).
    openmp = [] if sys.platform == "darwin" else ["-fopenmp"]
    cxx = ["-O3", "-Wno-psabi", *openmp]
    if settings.get("INIK_CPU_NATIVE"):
        cxx += ["-march=native", "-DINIK_NO_CLONES"]
    link = openmp

    build_cuda = settings.get("INIK_BUILD_CUDA")  # True, False or None (auto)
    if build_cuda is False:
        want_cuda, why = False, "INIK_BUILD_CUDA=0"
    elif torch.version.cuda is None:
        want_cuda, why = False, "torch has no CUDA"
    elif cpp_extension.CUDA_HOME is None:
        want_cuda, why = False, "no CUDA toolkit (CUDA_HOME) found"
    elif build_cuda or os.environ.get("TORCH_CUDA_ARCH_LIST"):
        want_cuda, why = True, "requested by INIK_BUILD_CUDA=1 / TORCH_CUDA_ARCH_LIST"
    elif torch.cuda.is_available():
        want_cuda, why = True, "a GPU is visible"
    else:
        want_cuda, why = False, "no GPU visible (set INIK_BUILD_CUDA=1 to build the CUDA kernels anyway)"

    if build_cuda and not want_cuda:
        raise RuntimeError(f"inik setup: INIK_BUILD_CUDA=1 but the CUDA kernels cannot be built: {why}")

    sources = [os.path.join(csrc, "ifm_cpu.cpp"), os.path.join(csrc, "lstm_cpu.cpp"),
               os.path.join(csrc, "winograd_cpu.cpp")]
    if want_cuda:
        sources.append(os.path.join(csrc, "ifm_cuda.cu"))
        ext = cpp_extension.CUDAExtension(
            "inik._C", sources,
            include_dirs=[os.path.join(here, "csrc")],
            library_dirs=_cudart_dirs(cpp_extension.CUDA_HOME),
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-lineinfo"]},
            extra_link_args=link)
        if not torch.cuda.is_available() and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            # torch reads the architectures off the visible GPUs; with none, name some.
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"
            why += "; no GPU visible, so TORCH_CUDA_ARCH_LIST=8.0;9.0+PTX"
        _say(f"building inik._C with CPU and CUDA kernels ({why})")
    else:
        ext = cpp_extension.CppExtension(
            "inik._C", sources,
            include_dirs=[os.path.join(here, "csrc")],
            extra_compile_args={"cxx": cxx},
            extra_link_args=link)
        _say(f"building inik._C with CPU kernels only ({why})")
    return [ext], {"build_ext": _build_ext_class(cpp_extension.BuildExtension)}


ext_modules, cmdclass = _extension_build()

# The project's metadata is in pyproject.toml; setup.py adds the packages (kernels/
# installs as inik.kernels) and the compiled extension.
setup(
    license="MIT",
    packages=find_packages(include=["inik", "inik.*"]) + ["inik.kernels"],
    package_dir={"inik.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
