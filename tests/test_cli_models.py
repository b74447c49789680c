"""The command line: summary output and one-line errors with exit status 2."""

import json
import subprocess
import sys

import pytest

from resnet.cli import main


def test_summary_json(capsys):
    assert main(["summary", "resnet50", "--variant", "v1.5", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["model"] == "resnet50" and s["params"] == 25_557_032
    assert abs(s["macs"] / 4.1e9 - 1) < 0.01


def test_models_lists_every_name_and_the_shipped_weights(capsys):
    from resnet.weights.pretrained import available, shipped

    main(["models"])
    out = capsys.readouterr().out
    for name in ("resnet20", "resnet1202", "plain110", "resnet152", "plain34"):
        assert name in out
    assert available() and all(name in out for name in available())
    main(["models", "--json"])
    listed = json.loads(capsys.readouterr().out)
    assert set(listed["weights"]) == set(available()) and listed["weights"] == shipped()
    err = shipped()["resnet20-cifar10"]["accuracy"]["top1_error"]
    assert f"val error {err:.2f}%" in out


@pytest.mark.parametrize("argv, needle", [
    (["summary", "resnet21"], "choose one of"),
    (["summary", "plain20", "--shortcut", "A"], "plain net"),
    (["summary", "resnet18", "--variant", "v1.5"], "bottleneck"),
    (["summary", "resnet18", "--input-size", "8"], "too small"),
    (["summary", "resnet18", "--num-classes", "-3"], "positive"),
])
def test_errors_are_one_line_exit_2(argv, needle):
    r = subprocess.run([sys.executable, "-m", "resnet", *argv], capture_output=True, text=True)
    assert r.returncode == 2
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
