"""Builds the optional native code; metadata lives in pyproject.toml.

Two extensions: lb's data path (balancer/_speedups.c) and lb-bridge's batch cut
(workers/_jscut.c). Each build is allowed to fail (no compiler, no Python headers): lb then runs
the pure-Python engine and the bridge the pure-Python cut (workers.jsproto.cut_batch_counted_py),
which are the references. Set LB_REQUIRE_NATIVE=1 to make a failed build an error.
"""

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

COMPILE_ARGS = ["-O2", "-Wall", "-Wextra", "-Werror", "-std=c11", "-D_GNU_SOURCE"]


class OptionalBuildExt(build_ext):
    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            self._skip("the native extensions", exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._skip(ext.name, exc)

    def _skip(self, what: str, exc: Exception) -> None:
        if os.environ.get("LB_REQUIRE_NATIVE"):
            raise exc
        print(f"warning: {what} not built ({exc}); the pure-Python code runs instead")


setup(
    ext_modules=[
        # OptionalBuildExt decides: setuptools' own optional=True would swallow the failure
        # before LB_REQUIRE_NATIVE could make it an error
        Extension("balancer._speedups", ["balancer/_speedups.c"], extra_compile_args=COMPILE_ARGS,
                  optional=False),
        Extension("workers._jscut", ["workers/_jscut.c"], extra_compile_args=COMPILE_ARGS, optional=False),
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
