"""experiment.py: an experiment read once, every (run, seed) with its status."""


def test_a_run_a_live_process_holds_is_running_in_the_table_not_interrupted(tmp_path):
    from convnext_roadmap import results
    from convnext_roadmap.experiment import Experiment
    from convnext_roadmap.plan import save

    save(tmp_path, "resnet50", "smoke", [0], [{"name": "resnet50", "label": "ResNet-50", "baseline": None}])
    run = results.run_dir(tmp_path, "resnet50", 0)
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"epoch": 1, "top1": 10.0}\n')  # one epoch done, no summary yet
    lock = results.RunLock(run)
    assert lock.acquire() is None  # this process trains it
    assert [r["status"] for r in Experiment.load(tmp_path).cells] == ["running"]
    lock.release()  # its trainer ended without a summary
    assert [r["status"] for r in Experiment.load(tmp_path).cells] == ["interrupted"]
