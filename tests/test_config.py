"""The schema knows no torch and no timm; the checks that need timm are the plan's pre-flight, and still name the
file or flag that set the key."""

import subprocess
import sys

from convnext_roadmap.cli import main


def test_the_schema_imports_neither_torch_nor_timm():
    # both kinds of network read, the groups rule (which needs the geometry) run, and still no torch or timm
    code = ("import sys, yaml, convnext_roadmap.config as c\n"
            "from convnext_roadmap.resources import ABLATIONS\n"
            "net = c.parse(yaml.safe_load((ABLATIONS / 'base' / 'resnet50.yaml').read_text()))\n"
            "ref = c.parse({'timm': {'name': 'swin_tiny_patch4_window7_224'}})\n"
            "print(type(net).__name__, type(ref).__name__, "
            "sorted(m for m in ('torch', 'timm', 'fvcore') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "RoadmapNet TimmNet []"


def test_a_config_recorded_before_the_union_still_reads():
    # jobs.json of an earlier version keeps every section, the absent ones as null
    from convnext_roadmap import resolve_config
    from convnext_roadmap.config import RoadmapNet, TimmNet, parse

    old = {**resolve_config(upto="gelu").model_dump(), "timm": None}
    assert isinstance(parse(old), RoadmapNet) and parse(old) == resolve_config(upto="gelu")
    old = {"timm": {"name": "resnet18", "drop_path": 0.0, "img_size": None}, "train": None, "data": None,
           **dict.fromkeys(("stem", "stages", "block", "downsample", "head"))}
    assert isinstance(parse(old), TimmNet) and parse(old).timm.name == "resnet18"


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
