"""The installed package: version, typing marker, lazy imports, public names."""

from __future__ import annotations

import re
import subprocess
import sys
import types
from importlib.metadata import version
from pathlib import Path

import camkit

ROOT = Path(__file__).resolve().parents[1]


def test_version_matches_distribution() -> None:
    assert camkit.__version__ == version("camkit")


def test_ships_py_typed() -> None:
    assert (Path(camkit.__file__).parent / "py.typed").is_file()


def test_import_does_not_import_matplotlib() -> None:
    code = "import sys, camkit; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_call_does_not_import_dynamo() -> None:
    """Only torch.compile needs the hooks kept out of tracing; importing Dynamo takes seconds."""
    code = (
        "import sys, torch, camkit\n"
        "m = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), "
        "torch.nn.Linear(72, 3))\n"
        "camkit.GradCAM(m, '0')(torch.randn(2, 1, 8, 8), 1)\n"
        "print('torch._dynamo' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_public_names_are_documented() -> None:
    for name in camkit.__all__:
        obj = getattr(camkit, name)
        if name not in {"__version__", "Target", "ScoreFunction"}:
            assert obj.__doc__ and obj.__doc__.strip(), name


def test_public_names_in_api_reference() -> None:
    api = (Path(__file__).parents[1] / "docs" / "api.rst").read_text()
    documented = set(re.findall(r"^\.\. (?:auto\w+|py:data):: (?:camkit\.)?([\w.]+)", api, re.M))
    for name in camkit.__all__:
        if isinstance(getattr(camkit, name), types.ModuleType):
            assert name in documented, f"module camkit.{name} missing from docs/api.rst"
            for member in getattr(camkit, name).__all__:
                assert f"{name}.{member}" in documented, f"{name}.{member} missing"
        else:
            assert name in documented, f"{name} missing from docs/api.rst"


def _test_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if "python -m pytest" in line]
    assert len(lines) == 1, lines
    return lines[0]


def test_ci_runs_the_readme_test_command_and_it_installs_what_tests_need() -> None:
    root = Path(__file__).parents[1]
    line = _test_line((root / "README.md").read_text())
    ci = (root / ".ci" / "run").read_text().rstrip().splitlines()
    assert ci[-1] == line  # the README's line, last, so that its result is the run's
    assert re.fullmatch(r'pip install "\.\[test\]" && python -m pytest', line)


def test_ci_reruns_the_numeric_tests_on_other_kernels_and_one_thread() -> None:
    root = Path(__file__).parents[1]
    ci = (root / ".ci" / "run").read_text()
    assert "ATEN_CPU_CAPABILITY=default python -m pytest" in ci
    assert "OMP_NUM_THREADS=1 python -m pytest" in ci
    listed = re.search(r"NUMERIC=\(([^)]*)\)", ci)
    assert listed is not None
    names = listed.group(1).split()
    assert len(names) > 15
    for name in names:  # a renamed test file would silently drop out of the reruns
        assert (root / "tests" / f"test_{name}.py").is_file(), name


def _requirements(extras: bool) -> list[str]:
    """pyproject.toml's requirements: the dependencies, and with ``extras`` every extra's."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the installed distribution's, the same lines
        from importlib.metadata import requires

        listed = requires("camkit") or []
        return [r.split(";")[0].strip() for r in listed if extras or "extra ==" not in r]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"]]
    if extras:
        for extra in project["optional-dependencies"].values():
            requirements += extra
    return requirements


def test_the_oldest_versions_run_installs_the_declared_floors() -> None:
    """.ci/run's oldest-versions run pins each dependency at pyproject's floor (its major
    and minor version), so that the floors users are promised are the ones tested."""
    floor = re.search(r"^FLOOR=\(([^)]*)\)", (ROOT / ".ci" / "run").read_text(), re.M)
    assert floor is not None
    pinned = dict(pin.split("==") for pin in floor.group(1).split())
    dependencies = _requirements(extras=False)
    assert len(dependencies) == 4
    for requirement in dependencies:
        found = re.fullmatch(r"([\w-]+)>=([\d.]+)", requirement)
        assert found is not None, requirement
        name, lowest = found.groups()
        assert pinned[name].split(".")[:2] == lowest.split(".")[:2], (name, pinned[name])


def test_dependencies_set_no_upper_bound() -> None:
    """A library must not stop its users from upgrading; versions are pinned in .ci/run only."""
    requirements = _requirements(extras=True)
    assert len(requirements) > 10
    capped = [r for r in requirements if re.search(r"<|==|~=", r)]
    assert not capped, capped


def test_no_module_imports_another_modules_private_names() -> None:
    import ast

    package = Path(camkit.__file__).parent
    submodules = {p.stem for p in package.rglob("*.py")} | {p.name for p in package.iterdir()}
    checked = 0
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("camkit"):
                for alias in node.names:
                    checked += 1
                    private = alias.name.startswith("_") and alias.name not in submodules
                    assert not private, f"{path.relative_to(package)} imports {alias.name}"
    assert checked > 50


def test_camkit_never_imports_the_optional_libraries() -> None:
    """The integrations and peers are extras for the tests and benchmarks: no camkit module
    imports them, so ``pip install camkit`` needs none of them. (torchvision is imported
    by the command line only when ``--model torchvision:NAME`` asks for it.)"""
    optional = ("transformers", "timm", "monai", "einops", "quantus", "pytorch_grad_cam",
                "torchcam", "captum", "nibabel", "pydicom", "datasets")  # fmt: skip
    pattern = re.compile(rf"^\s*(?:import|from)\s+({'|'.join(optional)})\b", re.M)
    found = {
        str(path.relative_to(Path(camkit.__file__).parent)): pattern.findall(path.read_text())
        for path in Path(camkit.__file__).parent.rglob("*.py")
    }
    assert not {name: hits for name, hits in found.items() if hits}
