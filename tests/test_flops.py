import pytest

from convnext_roadmap.cli import _compare
from convnext_roadmap.measure import complexity
from convnext_roadmap.roadmap import path_variants, paper_reference

PAPER = paper_reference()


def _variants():
    for base in ("resnet50", "resnet200"):
        for v in path_variants(base=base, sweep="kernel_size"):
            if (base, v.name) in PAPER.index:
                yield pytest.param(base, v, id=f"{base}:{v.name}")


@pytest.mark.parametrize("base, variant", list(_variants()))
def test_gflops_match_the_paper(base, variant):
    ref = PAPER.loc[(base, variant.name)]
    ours = complexity(variant.cfg)
    assert _compare(ours["gflops"], ref)["check"].startswith("ok"), (ours, ref.to_dict())
    assert ours["gflops_fvcore"] > ours["gflops"]


def test_every_paper_row_of_the_path_is_measured():
    measured = {(b, v.name) for b in ("resnet50", "resnet200") for v in path_variants(base=b, sweep="kernel_size")}
    missing = [key for key in PAPER.index if key not in measured and "reference" not in str(PAPER.loc[key, "note"])]
    assert missing == []


def test_anomalies_are_flagged_not_hidden():
    check = _compare(4.146, PAPER.loc[("resnet50", "layernorm")])["check"]
    assert check.startswith("ok; paper anomaly") and "4.46" in check
    assert _compare(4.30, PAPER.loc[("resnet50", "gelu")])["check"].startswith("OFF")


def test_flops_are_taken_at_paper_scale():
    from convnext_roadmap import resolve_config

    small = resolve_config("layer_scale", overrides=["stages.width_mult=0.25"])
    assert complexity(small)["params"] == 28_589_128
