"""The compiled pieces: the server's gRPC front (service/native) and the bench's gRPC client (bench/native).

- ``service._grpc_h2``: gRPC over HTTP/2 for the event loop, on nghttp2 (Debian/Ubuntu:
  ``apt-get install libnghttp2-dev pkg-config``). Without it the server serves gRPC with grpc.aio.
- ``bench._grpc_load``: the bench's C++ gRPC load generator, on gRPC's C++ library
  (``apt-get install libgrpc++-dev``). Without it the bench drives gRPC with grpc.aio.

Each is built when pkg-config finds its libraries. DEEPSERVE_NATIVE=require fails the install when
one cannot be built (CI); DEEPSERVE_NATIVE=server requires only the server's front (the Docker
image); DEEPSERVE_NATIVE=off skips both. Everything else about the package is in pyproject.toml.
"""

import os
import shlex
import subprocess
import sys

from pybind11.setup_helpers import Pybind11Extension
from setuptools import setup

# module, source, pkg-config packages, the apt package that provides them, needed by the server
NATIVE = [
    ("deepserve.service._grpc_h2", "deepserve/service/native/h2_session.cc", ["libnghttp2", "zlib"],
     "libnghttp2-dev", True),
    ("deepserve.bench._grpc_load", "deepserve/bench/native/grpc_load.cc", ["grpc++"], "libgrpc++-dev", False),
]


def pkg_config(flag: str, packages: list[str]) -> list[str]:
    out = subprocess.run(["pkg-config", flag, *packages], check=True, capture_output=True, text=True)
    return shlex.split(out.stdout)


def native_extensions() -> list[Pybind11Extension]:
    mode = os.environ.get("DEEPSERVE_NATIVE", "auto")
    if mode == "off":
        return []
    extensions = []
    for module, source, packages, apt, for_server in NATIVE:
        try:
            cflags, libs = pkg_config("--cflags", packages), pkg_config("--libs", packages)
        except (OSError, subprocess.CalledProcessError) as exc:
            if mode == "require" or (mode == "server" and for_server):
                raise SystemExit(f"DEEPSERVE_NATIVE={mode}: pkg-config found no {packages}: {exc}") from exc
            print(f"deepserve: {' '.join(packages)} not found (apt-get install {apt} pkg-config); "
                  f"building without {module}, grpc.aio stands in", file=sys.stderr)  # fmt: skip
            continue
        # RPATH (not RUNPATH, so it also covers the libraries' own dependencies) to a folder next to
        # the module: the Docker image copies the shared libraries there; elsewhere it is absent.
        rpath = ["-Wl,--disable-new-dtags", "-Wl,-rpath,$ORIGIN/_native_libs"]
        extensions.append(
            Pybind11Extension(
                module,
                [source],
                cxx_std=17,
                extra_compile_args=[*cflags, "-O2"],
                extra_link_args=[*libs, *rpath],
            )
        )
    return extensions


setup(ext_modules=native_extensions())
