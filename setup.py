"""Builds lb's optional native data path (balancer/_speedups.c); metadata lives in pyproject.toml.

The build is allowed to fail (no compiler, no Python headers): lb then runs the pure-Python
engine, which is the reference. Set LB_REQUIRE_NATIVE=1 to make a failed build an error.
"""

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            self._skip(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._skip(exc)

    def _skip(self, exc: Exception) -> None:
        if os.environ.get("LB_REQUIRE_NATIVE"):
            raise exc
        print(f"warning: balancer._speedups not built ({exc}); lb will use the pure-Python engine")


setup(
    ext_modules=[
        Extension(
            "balancer._speedups",
            ["balancer/_speedups.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror", "-std=c11", "-D_GNU_SOURCE"],
            # OptionalBuildExt decides: setuptools' own optional=True would swallow the failure
            # before LB_REQUIRE_NATIVE could make it an error
            optional=False,
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
