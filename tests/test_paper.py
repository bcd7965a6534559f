"""paper.py: the paper's numbers, its path, and its own Δs under the table's test."""

from convnext_roadmap.cli import main


def test_paper_prints_its_own_steps_under_welch(capsys):
    assert main(["paper"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "Welch's t" in out[0] and "Holm over the 12 tested" in out[0]
    verdicts = {ln.split()[0]: ln.split(None, 4)[-1].strip() for ln in out[2:]}
    assert verdicts["patchify_stem"] == verdicts["gelu"] == "within noise" and verdicts["widen"] == "better"
    assert main(["paper", "--base", "resnet200"]) == 0
    assert "not tested: no std printed" in capsys.readouterr().out


def test_the_papers_path_is_the_roadmaps_as_far_as_the_paper_prints_it():
    from convnext_roadmap import paper, roadmap

    for base in roadmap.bases():
        printed = [name for name, *_ in paper.path(base)]
        # Table 10 and 11 end at ConvNeXt: the released model's layer scale is not among their rows, nor is
        # ConvNeXt V2's GRN (another paper, which prints no supervised top-1 for it)
        assert printed == [base, *(s.name for s in roadmap.steps(base) if s.name not in ("layer_scale", "grn"))]
