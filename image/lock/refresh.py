"""Refresh the hash-locked Python layer of the kiosk image: ``make image-lock``.

Writes, next to this file, from ``pyproject.toml``:

- ``arm64.txt``: the virtualenv ``/opt/kioskvoice`` on a 64-bit kiosk;
- ``armhf.txt``: the same on a 32-bit one (Raspberry Pi OS on a Zero 2 W): numpy is Debian's
  there, as PyPI has no armv7 wheel of it and building it on a Pi takes hours;
- ``build.txt``: pip, and the build tools it uses, without isolation, for the dependencies that
  come as source (speexdsp everywhere, soxr on armhf), so that what compiles them is locked too;
- ``check.txt``: pytest and its plugins, which only image/check installs, into its throwaway
  root, to run tests there.

Each holds every package pinned (``==``) with the sha256 of every file PyPI has for that
version; ``image/install-into`` installs with ``pip --require-hashes``. uv resolves for the
target from any host, without emulation: Bookworm's Python (3.11.2) on aarch64 manylinux_2_36,
or plain linux for armhf (uv has no armv7 target; no dependency has a platform marker, and
image/check's pip resolves the lock again inside the armhf root). Packages Debian provides
(PyAudio, systemd-python; numpy on armhf) are left out of the input, pinned by constraint to
Debian Bookworm's versions where something else needs them, and not emitted.

Each lock's header records the sha256 of its input; tests/test_image.py recomputes it, so a
changed dependency in pyproject.toml without a refreshed lock fails ``make test``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
UV_VERSION = "0.13.8"
PYTHON_VERSION = "3.11.2"  # Debian Bookworm's python3
ARCHES = {"arm64": "aarch64-manylinux_2_36", "armhf": "linux"}
# Python packages that come from Debian's archive (the kiosk's venv sees them through
# --system-site-packages): project name -> (Debian package, Bookworm's version). PyAudio and
# systemd-python are source-only on PyPI and would need a compiler on the kiosk; numpy has no
# armv7 wheel on PyPI. image/install-into installs the Debian packages.
_DEBIAN_EVERYWHERE = {
    "pyaudio": ("python3-pyaudio", "0.2.13"),
    "systemd-python": ("python3-systemd", "235"),
}
DEBIAN = {
    "arm64": _DEBIAN_EVERYWHERE,
    "armhf": {**_DEBIAN_EVERYWHERE, "numpy": ("python3-numpy", "1.24.2")},
}
# Not a dependency of the package, but of the image: gpiozero's pin driver on every Pi.
IMAGE_EXTRAS = ["lgpio"]
# What builds the source-only dependencies: speexdsp's setup.py (setuptools, wheel) and soxr's
# build-system.requires (armhf only: PyPI has aarch64 wheels of soxr, no armv7 ones); and pip
# itself, which from 23.1 reuses wheels it built from hashed sources (Bookworm's is 23.0.1).
BUILD_TOOLS = [
    "pip>=23.1",
    "setuptools",
    "wheel",
    "scikit-build-core>=0.11",
    "nanobind>=2,<3",
    "setuptools-scm[toml]>=6.2",
]
# The test runner and the plugins pyproject.toml's pytest configuration and conftest.py use.
CHECK_TOOLS = {"pytest", "pytest-asyncio", "pytest-timeout", "hypothesis"}


def canonical(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return canonical(match.group(1))


@dataclass(frozen=True)
class LockInput:
    """What one lock file is resolved from."""

    name: str
    requirements: list[str]
    constraints: list[str]
    platform: str
    no_emit: list[str]

    def digest(self) -> str:
        text = "\n".join(
            [
                f"python {PYTHON_VERSION} platform {self.platform}",
                *sorted(self.requirements),
                "constraints:",
                *sorted(self.constraints),
                "not emitted:",
                *sorted(self.no_emit),
            ]
        )
        return hashlib.sha256(text.encode()).hexdigest()


def _project(pyproject: Path) -> dict:
    return tomllib.loads(pyproject.read_text())["project"]


def lock_inputs(pyproject: Path = REPO / "pyproject.toml") -> list[LockInput]:
    """Every lock file's input, in the order they must be resolved (runtime locks first)."""
    project = _project(pyproject)
    inputs = []
    for arch, platform in ARCHES.items():
        debian = DEBIAN[arch]
        wanted = [r for r in project["dependencies"] if requirement_name(r) not in debian]
        inputs.append(
            LockInput(
                name=arch,
                requirements=wanted + IMAGE_EXTRAS,
                constraints=[f"{name}=={version}" for name, (_, version) in sorted(debian.items())],
                platform=platform,
                no_emit=sorted(debian),
            )
        )
    # Shared by both architectures: constrained by both runtime locks, so a package in two
    # files has one version.
    runtime = [f"{arch}.txt" for arch in ARCHES]
    check = [
        r for r in project["optional-dependencies"]["test"] if requirement_name(r) in CHECK_TOOLS
    ]
    for name, requirements in (("build", BUILD_TOOLS), ("check", check)):
        inputs.append(
            LockInput(
                name=name,
                requirements=list(requirements),
                constraints=[f"-c {file}" for file in runtime],
                platform=ARCHES["arm64"],
                no_emit=[],
            )
        )
    return inputs


def header(lock: LockInput) -> str:
    return (
        f"# image/lock/{lock.name}.txt: generated by `make image-lock` (image/lock/refresh.py)\n"
        f"# from pyproject.toml; do not edit. pip install --require-hashes -r this file.\n"
        f"# input-sha256: {lock.digest()}\n"
    )


def uv_binary(cache: Path) -> Path:
    """uv, pinned, in a virtualenv of its own under the cache directory."""
    venv = cache / f"uv-{UV_VERSION}"
    uv = venv / "bin" / "uv"
    if not uv.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", f"uv=={UV_VERSION}"], check=True
        )
    return uv


def compile_lock(uv: Path, lock: LockInput, out: Path) -> None:
    constraints = out.parent / f".{lock.name}.constraints"
    constraints.write_text("".join(f"{c}\n" for c in lock.constraints))
    command = [
        str(uv),
        "pip",
        "compile",
        "--quiet",
        "--no-header",
        "--generate-hashes",
        "--python-version",
        PYTHON_VERSION,
        "--python-platform",
        lock.platform,
        "--constraints",
        str(constraints),
        *(arg for name in lock.no_emit for arg in ("--no-emit-package", name)),
        "-",
    ]
    env = dict(os.environ)
    # A TLS-intercepting proxy's CA, as pip is told with PIP_CERT.
    if env.get("PIP_CERT") and "SSL_CERT_FILE" not in env:
        env["SSL_CERT_FILE"] = env["PIP_CERT"]
    try:
        result = subprocess.run(
            command,
            input="".join(f"{r}\n" for r in lock.requirements),
            capture_output=True,
            text=True,
            env=env,
            cwd=out.parent,
        )
    finally:
        constraints.unlink()
    if result.returncode != 0:
        sys.exit(f"uv pip compile for {lock.name} failed:\n{result.stderr}")
    out.write_text(header(lock) + result.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kioskvoice"
    parser.add_argument("--cache", type=Path, default=default_cache)
    args = parser.parse_args()
    uv = uv_binary(args.cache)
    for lock in lock_inputs():
        out = HERE / f"{lock.name}.txt"
        compile_lock(uv, lock, out)
        pins = sum(1 for line in out.read_text().splitlines() if "==" in line and line[:1] != "#")
        print(f"{out.relative_to(REPO)}: {pins} packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
