"""The wheel carries the roadmap: built from the project's files and installed elsewhere, `roadmap` finds its
steps, recipes, profiles and the paper's numbers without the repository."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_installed_wheel_runs_from_another_folder(tmp_path):
    source = tmp_path / "source"  # the project's own files, so that the build leaves this checkout alone
    (source / "results").mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "results/paper_reference.csv"):
        shutil.copy(ROOT / name, source / name)
    for name in ("ablations", "convnext_roadmap", "slurm"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
                   check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("convnext_roadmap-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(tmp_path / "site"), str(wheel)], check=True,
                   capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def roadmap(*args):
        # this venv's editable install of the checkout answers for any module the wheel lacks: take it away
        code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)]; "
                "import convnext_roadmap.cli as c; print(c.__file__, file=sys.stderr); sys.exit(c.main())")
        return subprocess.run([sys.executable, "-c", code, *args], cwd=elsewhere, capture_output=True, text=True,
                              env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin",
                                   "HOME": str(tmp_path)})

    steps = roadmap("steps")
    assert steps.returncode == 0, steps.stderr
    assert steps.stderr.startswith(str(tmp_path / "site"))  # the installed copy, not this checkout
    assert len(steps.stdout.splitlines()) == 15 and "kernel sz. → 7" in steps.stdout
    flops = roadmap("flops", "--upto", "stage_ratio", "--format", "csv")
    assert flops.returncode == 0, flops.stderr
    lines = flops.stdout.splitlines()
    assert [ln.split(",")[0] for ln in lines[1:]] == ["resnet50", "stage_ratio"] and lines[2].endswith(",ok")
    recipe = roadmap("show", "--recipe", "cpu_proxy")
    assert recipe.returncode == 0 and "width_mult: 0.25" in recipe.stdout, recipe.stderr
    assert (tmp_path / "site" / "convnext_roadmap" / "_data" / "slurm" / "default.yaml").is_file()


def test_every_subpackage_is_in_the_wheel():
    # pyproject lists the packages by hand (to map the data folders in): a new subpackage must be listed too
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "convnext_roadmap").rglob("__init__.py")}
    assert found <= listed, f"add to pyproject.toml's packages: {sorted(found - listed)}"
