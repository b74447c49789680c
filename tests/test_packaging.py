"""The distribution: a wheel of its own name that holds everything the package reads at run time (shipped weights,
the embedded CIFAR-10 subset, the ImageNet synset list, the fused kernel's C++ source) and its licence files; the
fused kernel builds under the package's cache root and says so; install hints name the distribution.

CI (.ci/run) also installs the wheel into a fresh environment and evaluates a shipped net from outside the checkout.
"""

from __future__ import annotations

import email
import importlib.util
import logging
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import resnet
from resnet.models import fused

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "resnet"
DISTRIBUTION = "resnet-reference"


def _setuptools_version() -> tuple[int, ...]:
    if importlib.util.find_spec("setuptools") is None:
        return (0,)
    from importlib.metadata import version

    return tuple(int(p) for p in re.findall(r"\d+", version("setuptools"))[:2])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """The wheel, built from a copy of the checkout's packaging files and src/ (no build output lands in the checkout),
    with this environment's setuptools: no download."""
    if _setuptools_version() < (77,):
        pytest.skip("building the wheel needs setuptools >= 77 in this environment (pyproject's build requirement)")
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "THIRD_PARTY_NOTICES.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                        str(source), "-w", str(tmp / "dist")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "deprecat" not in r.stderr.lower(), r.stderr  # the licence as a TOML table printed a notice three times
    (path,) = (tmp / "dist").glob("*.whl")
    assert path.name == f"resnet_reference-{resnet.__version__}-py3-none-any.whl"
    return zipfile.ZipFile(path)


def test_the_wheel_holds_every_file_the_package_reads(wheel):
    names = set(wheel.namelist())
    # every module, and every file of the package that is not Python: weights, assets, the kernel's source
    files = [p for p in PACKAGE.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
    missing = [str(p.relative_to(PACKAGE.parent)) for p in files if str(p.relative_to(PACKAGE.parent)) not in names]
    assert not missing, f"not in the wheel: {missing}"
    for required in ("resnet/weights/pretrained/resnet20-cifar10.safetensors",
                     "resnet/weights/pretrained/resnet20-cifar10.json",
                     "resnet/assets/cifar10-embedded.tar.gz", "resnet/assets/imagenet_wnids.txt",
                     f"resnet/models/{fused._SOURCE.name}"):
        assert required in names


def test_the_wheel_names_its_distribution_licence_and_command(wheel):
    info = f"resnet_reference-{resnet.__version__}.dist-info"
    meta = email.message_from_bytes(wheel.read(f"{info}/METADATA"))
    assert (meta["Name"], meta["Version"]) == (DISTRIBUTION, resnet.__version__)
    assert meta["License-Expression"] == "BSD-3-Clause"
    assert {f"{info}/licenses/LICENSE", f"{info}/licenses/THIRD_PARTY_NOTICES.md"} <= set(wheel.namelist())
    assert "resnet = resnet.cli:main" in wheel.read(f"{info}/entry_points.txt").decode()
    extras = meta.get_all("Provides-Extra")
    assert {"export", "tensorboard"} <= set(extras)


def test_the_fused_kernel_builds_under_the_cache_root_and_says_so(monkeypatch, tmp_path, caplog):
    import torch.utils.cpp_extension as cpp

    calls = []
    monkeypatch.setattr(cpp, "load", lambda **kwargs: calls.append(kwargs) or "built")
    monkeypatch.setenv("RESNET_CACHE", str(tmp_path))
    with caplog.at_level(logging.INFO, logger="resnet"):
        assert fused.extension.__wrapped__() == "built"
    (build,) = calls
    folder = Path(build["build_directory"])
    assert folder.parent.parent == tmp_path / "torch_extensions" and folder.name == build["name"]
    assert build["sources"] == [str(fused._SOURCE)]  # the package's own copy (an installed wheel's, there)
    said = [r for r in caplog.records if r.name.startswith("resnet.")]
    assert [r.getMessage() for r in said] == [f"building the fused CPU kernel (once, about a minute) in {folder}"]
    # built: loading it again says nothing
    (folder / f"{build['name']}.so").touch()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="resnet"):
        fused.extension.__wrapped__()
    assert not [r for r in caplog.records if r.name.startswith("resnet.")]


def test_install_hints_name_the_distribution():
    """``pip install resnet`` installs an unrelated project: every hint names resnet-reference."""
    wrong = [f"{p.relative_to(ROOT)}:{i}" for p in sorted(PACKAGE.rglob("*.py"))
             for i, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"pip install\s+['\"]?resnet(?!-reference)\b", line)]
    assert not wrong, wrong
