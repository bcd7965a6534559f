"""seeds.py: `roadmap seeds`, the seeds a Δ needs at 80% power, from an experiment's pooled σ or a σ given."""

import pytest

from convnext_roadmap.cli import main

from conftest import three_by_three


def test_seeds_from_a_given_sigma_and_bad_requests_are_one_line(capsys, tmp_path):
    assert main(["seeds", "--sigma", "1.95", "--rows", "8", "--delta", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("# σ 1.95 (given); 8 networks") and out[2].split() == ["1.00", "--delta", "96"]
    assert main(["seeds", "--sigma", "1.95"]) == 2
    assert "give --rows K too" in capsys.readouterr().err
    assert main(["seeds", "--sigma", "1.95", "--rows", "1"]) == 2
    assert "--rows 1: a family needs two networks or more" in capsys.readouterr().err
    assert main(["seeds", "--results", str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    for flag, value in (("--sigma", "nan"), ("--sigma", "-1"), ("--sigma", "0"), ("--delta", "0"), ("--delta", "inf")):
        with pytest.raises(SystemExit) as stopped:
            main(["seeds", "--sigma", "1.95", "--rows", "8", flag, value])
        err = capsys.readouterr().err
        assert stopped.value.code == 2 and f"argument {flag}: got '{value}', expected a number > 0" in err
        assert err.count("\n") == 1


def test_seeds_of_an_experiment_from_its_pooled_sigma(tmp_path, capsys):
    # test_report's experiment: pooled σ √(29/72) on 4 df, 3 networks; each run 900 s × 2 threads
    from scipy import stats as scipy_stats

    three_by_three(tmp_path / "t")
    assert main(["seeds", "t", "--results", str(tmp_path), "--delta", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    sigma = (29 / 72) ** 0.5
    assert out[0].startswith(f"# σ {sigma:.2f} (pooled: t, 3 networks, 9 runs, 4 residual df)")
    # the fewest n with power ≥ 0.8 for Δ 1 over 3 networks: 2(n − 1) df, SE σ√(2/n), t at 1 − 0.05/4
    def reaches(n):
        df, se = 2 * (n - 1), sigma * (2 / n) ** 0.5
        crit = scipy_stats.t.ppf(1 - 0.05 / 4, df)
        return scipy_stats.nct(df, 1 / se).sf(crit) + scipy_stats.nct(df, 1 / se).cdf(-crit) >= 0.8
    n = next(k for k in range(2, 100) if reaches(k))
    assert out[1].split()[-1] == "(CPU-hours)" and out[2].split() == ["1.00", "--delta", str(n), f"{n * 3 * 0.5:.1f}"]
