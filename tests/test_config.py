"""The schema knows no torch and no timm; the checks that need timm are the plan's pre-flight, and still name the
file or flag that set the key."""

import subprocess
import sys

from convnext_roadmap.cli import main


def test_the_schema_imports_neither_torch_nor_timm():
    code = ("import sys, convnext_roadmap.config as c; c.Config.model_validate({}) if False else None; "
            "print(sorted(m for m in ('torch', 'timm', 'fvcore') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_timm_name_timm_does_not_know_is_one_line_naming_the_flag(tmp_path, capsys):
    code = main(["run", "--references", "convnext_tiny", "--set", "timm.name=resnet_nosuch", "--recipe", "smoke",
                 "--results", str(tmp_path), "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "--set timm.name=resnet_nosuch: timm.name: got 'resnet_nosuch', expected a model timm knows" in err
    assert list(tmp_path.iterdir()) == []


def test_show_runs_the_same_pre_flight(capsys):
    assert main(["show", "--recipe", "smoke", "--set", "data.pipeline=pil", "--set", "data.auto_augment=zzz"]) == 2
    err = capsys.readouterr().err
    assert "--set data.auto_augment=zzz: data.auto_augment: got 'zzz', which timm cannot read" in err
