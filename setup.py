"""The compiled pieces: the native gRPC front (service/native) and the bench's gRPC client (bench/native).

Built when pkg-config finds grpc++ (Debian/Ubuntu: ``apt-get install libgrpc++-dev pkg-config``).
Without it the package still installs and the server serves gRPC with grpc.aio instead.
DEEPSERVE_NATIVE=require fails the install when it cannot be built (CI, the Docker image);
DEEPSERVE_NATIVE=off skips it. Everything else about the package lives in pyproject.toml.
"""

import os
import shlex
import subprocess
import sys

from pybind11.setup_helpers import Pybind11Extension
from setuptools import setup

PACKAGES = ["grpc++", "absl_synchronization"]


def pkg_config(*args: str) -> list[str]:
    out = subprocess.run(["pkg-config", *args, *PACKAGES], check=True, capture_output=True, text=True)
    return shlex.split(out.stdout)


def native_extensions() -> list[Pybind11Extension]:
    mode = os.environ.get("DEEPSERVE_NATIVE", "auto")
    if mode == "off":
        return []
    try:
        cflags, libs = pkg_config("--cflags"), pkg_config("--libs")
    except (OSError, subprocess.CalledProcessError) as exc:
        if mode == "require":
            raise SystemExit(f"DEEPSERVE_NATIVE=require but pkg-config found no grpc++: {exc}") from exc
        print("deepserve: grpc++ not found (apt-get install libgrpc++-dev pkg-config); building without "
              "the native gRPC front, gRPC will be served by grpc.aio", file=sys.stderr)  # fmt: skip
        return []
    # RPATH (not RUNPATH, so it also covers gRPC's own dependencies) to a folder next to the module:
    # the Docker image copies the shared libraries there; elsewhere it is absent and ignored.
    rpath = ["-Wl,--disable-new-dtags", "-Wl,-rpath,$ORIGIN/_grpc_front_libs"]
    # the server's front, and the bench's gRPC load generator on the same library
    return [
        Pybind11Extension(
            module,
            [source],
            depends=headers,
            cxx_std=17,
            extra_compile_args=[*cflags, "-O2"],
            extra_link_args=[*libs, *rpath],
        )
        for module, source, headers in [
            ("service._grpc_front", "service/native/grpc_front.cc", ["service/native/call.h"]),
            ("bench._grpc_load", "bench/native/grpc_load.cc", []),
        ]
    ]


setup(ext_modules=native_extensions())
