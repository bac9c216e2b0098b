"""Build of the compiled kernels, ``fastconv._kernels``.

- ``-O3``; OpenMP when the compiler has it, otherwise a loud warning and a
  serial build (never a failed install);
- ``-march=native`` for source builds, turned off by ``FASTCONV_PORTABLE=1``
  for wheels that must run on other CPUs;
- Cython directives set once here: bounds checks and negative indices off,
  C division on. ``FASTCONV_BOUNDSCHECK=1`` turns the checks back on for debugging.
"""

import os
import shutil
import sys
import tempfile
import textwrap
import warnings

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _flag_works(compiler, flags, source):
    """Whether ``compiler`` compiles and links ``source`` with ``flags``."""
    tmp = tempfile.mkdtemp()
    try:
        path = os.path.join(tmp, "probe.c")
        with open(path, "w") as f:
            f.write(source)
        objects = compiler.compile([path], output_dir=tmp, extra_postargs=flags)
        compiler.link_executable(objects, os.path.join(tmp, "probe"), extra_postargs=flags)
        return True
    except Exception:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


OPENMP_PROBE = textwrap.dedent("""
    #include <omp.h>
    int main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }
""")
EMPTY_PROBE = "int main(void) { return 0; }\n"


class BuildExt(build_ext):
    def build_extensions(self):
        compile_args = ["-O3"]
        link_args = []
        if self.compiler.compiler_type == "msvc":
            compile_args = ["/O2"]
            openmp = ["/openmp"]
        else:
            openmp = ["-fopenmp"]
            native = os.environ.get("FASTCONV_PORTABLE", "0") in ("", "0")
            if native and _flag_works(self.compiler, ["-march=native"], EMPTY_PROBE):
                compile_args.append("-march=native")
                # gcc keeps to 256-bit vectors on AVX-512 CPUs unless told otherwise;
                # the direct tile's 8 x 32 float32 sums then take all 32 ymm
                # registers and spill, where they fit in 16 zmm ones.
                if _flag_works(self.compiler, ["-mprefer-vector-width=512"], EMPTY_PROBE):
                    compile_args.append("-mprefer-vector-width=512")
        if _flag_works(self.compiler, openmp, OPENMP_PROBE):
            compile_args += openmp
            link_args += openmp if self.compiler.compiler_type != "msvc" else []
        else:
            message = ("fastconv: this compiler has no OpenMP; building the kernels "
                       "single-threaded. Install an OpenMP runtime (libgomp/libomp) "
                       "and reinstall for parallel kernels.")
            warnings.warn(message)
            print("\n" + "!" * 78 + "\n" + message + "\n" + "!" * 78 + "\n", file=sys.stderr)
        for ext in self.extensions:
            ext.extra_compile_args = compile_args
            ext.extra_link_args = link_args
        super().build_extensions()


checks = os.environ.get("FASTCONV_BOUNDSCHECK", "0") not in ("", "0")
extensions = cythonize(
    [Extension("fastconv._kernels", ["fastconv/_kernels.pyx"],
               include_dirs=[np.get_include()],
               define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")])],
    compiler_directives={
        "language_level": 3,
        "boundscheck": checks,
        "wraparound": checks,
        "initializedcheck": checks,
        "cdivision": not checks,
    },
)

setup(ext_modules=extensions, cmdclass={"build_ext": BuildExt})
