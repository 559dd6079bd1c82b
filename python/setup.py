"""Build psd._core against libpsd, and ship libpsd inside the package.

libpsd comes from this repository: CMake builds it (target psd_client, no
tests) into python/build/libpsd, or PSD_BUILD_DIR names a build tree that
has it already (relative to the repository; tests/run.sh passes its own, so that the tests and the
benchmarks use the library they built). The shared object is copied next to
the extension and found through an $ORIGIN run path: nobody has to set the
loader path.
"""
import glob
import os
import shutil
import subprocess

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.environ.get("PSD_SOURCE_DIR") or os.path.dirname(HERE)


def libpsd_dir():
    """The directory holding libpsd.so (built here if PSD_BUILD_DIR is unset)."""
    tree = os.environ.get("PSD_BUILD_DIR")
    if not tree:
        tree = os.path.join(HERE, "build", "libpsd")
        subprocess.check_call(["cmake", "-S", ROOT, "-B", tree, "-DCMAKE_BUILD_TYPE=Release",
                               "-DPSD_BUILD_TESTS=OFF"])
        subprocess.check_call(["cmake", "--build", tree, "--target", "psd_client", "-j2"])
    d = os.path.join(ROOT, tree, "client")  # a relative tree is the repository's
    if not os.path.exists(os.path.join(d, "libpsd.so")):
        raise SystemExit(f"psd: no libpsd.so in {d} (build the psd_client target there)")
    return d


class BuildExt(build_ext):
    def run(self):
        # Always compile: an in-tree build directory may hold objects made
        # against another psd.h (setuptools does not follow headers).
        self.force = True
        lib = libpsd_dir()
        for ext in self.extensions:
            ext.library_dirs.append(lib)
        super().run()
        # The soname the extension needs, beside it.
        dest = os.path.dirname(self.get_ext_fullpath("psd._core"))
        for f in glob.glob(os.path.join(lib, "libpsd.so.*")):
            if os.path.basename(f).count(".") == 2:  # libpsd.so.0: the soname
                shutil.copyfile(os.path.realpath(f), os.path.join(dest, os.path.basename(f)))


core = Extension(
    "psd._core",
    sources=[os.path.join("src", f) for f in
             ("module.c", "client.c", "call.c", "future.c", "spec.c")],
    include_dirs=[os.path.join(ROOT, "client", "include"), os.path.join(ROOT, "common", "include")],
    depends=[os.path.join(ROOT, "client", "include", "psd.h"),
             os.path.join(ROOT, "common", "include", "psd_types.h"),
             os.path.join("src", "psdpy.h")],
    libraries=["psd"],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror", "-Wno-missing-field-initializers",
                        "-Wno-cast-function-type"],
    extra_link_args=["-Wl,-rpath,$ORIGIN"],
)

setup(ext_modules=[core], cmdclass={"build_ext": BuildExt})
