"""predict.py: finding a finished run, a test set's ids in their order, and the probabilities with a flip."""

import pytest
import torch

from convnext_roadmap import RoadmapError, predict


def test_a_run_is_a_folder_or_experiment_run_and_seed0_by_default(tmp_path):
    run = tmp_path / "exp" / "gelu" / "seed0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("{}\n")
    with pytest.raises(RoadmapError, match="seed0: the run has no best.pt yet"):
        predict.find_run(tmp_path, "exp/gelu")
    (run / "best.pt").write_bytes(b"")
    assert predict.find_run(tmp_path, "exp/gelu") == run
    assert predict.find_run(tmp_path, str(run)) == run
    with pytest.raises(RoadmapError, match="exp/widen: no such run"):
        predict.find_run(tmp_path, "exp/widen")


def test_a_test_sets_ids_keep_the_csvs_order_else_the_files_sorted(tmp_path):
    (tmp_path / "test").mkdir()
    for name in ("b", "a", "c"):
        (tmp_path / "test" / f"{name}.png").write_bytes(b"")
    assert [i for i, _ in predict.test_images(f"csv:{tmp_path}")] == ["a", "b", "c"]
    (tmp_path / "test.csv").write_text("id\nc\na\nb\n")
    assert [(i, p.name) for i, p in predict.test_images(f"csv:{tmp_path}")] == [("c", "c.png"), ("a", "a.png"),
                                                                                ("b", "b.png")]
    with pytest.raises(RoadmapError, match="expected csv:PATH"):
        predict.test_images("synthetic")


def test_a_flip_averages_the_probabilities_of_the_image_and_its_mirror():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 2 * 4, 5))  # sees left from right
    x = torch.randn(6, 3, 2, 4)
    loader = [(x[:4], None), (x[4:], None)]
    plain = predict._probabilities(model, loader, torch.device("cpu"), flip=False)
    flipped = predict._probabilities(model, loader, torch.device("cpu"), flip=True)
    with torch.no_grad():
        mirror = model(x[..., [3, 2, 1, 0]]).softmax(-1)  # the columns reversed by hand
        assert torch.allclose(plain, model(x).softmax(-1))
    assert torch.allclose(flipped, (plain + mirror) / 2) and not torch.allclose(flipped, plain)
