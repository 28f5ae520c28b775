"""The installed package: version, typing marker, lazy matplotlib, public names."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import camkit


def test_version_matches_distribution() -> None:
    assert camkit.__version__ == version("camkit")


def test_ships_py_typed() -> None:
    assert (Path(camkit.__file__).parent / "py.typed").is_file()


def test_import_does_not_import_matplotlib() -> None:
    code = "import sys, camkit; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_public_names_are_documented() -> None:
    for name in camkit.__all__:
        obj = getattr(camkit, name)
        if name not in {"__version__", "Target", "ScoreFunction"}:
            assert obj.__doc__ and obj.__doc__.strip(), name


def test_public_names_in_api_reference() -> None:
    api = (Path(__file__).parents[1] / "docs" / "api.rst").read_text()
    for name in camkit.__all__:
        if name != "__version__":
            assert name in api, f"{name} missing from docs/api.rst"
