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
