"""Reports from checked-in records (``resnet reproduce NAME --records DIR``): every recorded seed of each net is found
whatever its evaluation cadence or precision, nothing is trained, and the campaign's two-seed rule decides the
verdicts; the project's own records re-render the checked-in campaign reports with the same numbers."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from resnet.cli import main
from resnet.errors import UsageError
from resnet.reporting.verdicts import AGREES, NOT_SEPARABLE, NOT_TESTED
from resnet.runs.records import recorded_runs
from resnet.runs.spec import Options, RunSpec

REPO = Path(__file__).resolve().parents[1]


def write_record(records: Path, model: str, seed: int, val: float, train: float, *, ev: int = 500,
                 precision: str = "fp32", iterations: int = 32000) -> Path:
    """A record as the campaign copies it: config.json (the trainer's settings) and metrics.jsonl (curve + final)."""
    spec = RunSpec(model, seed=seed)
    opts = Options(name="cifar-depth", budget="fast-32k")
    cfg = asdict(replace(spec.train_config(opts), eval_every=ev, iterations=iterations))
    path = records / f"{model}-{seed}-{ev}-{precision}"
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"config": cfg, "runtime": {"precision": precision}}))
    curve = [{"step": s, "train_error": train + (iterations - s) / 1000, "val_error": val + (iterations - s) / 1000,
              "train_loss": 1.0} for s in range(ev, iterations + 1, ev)]
    final = {"final": True, "step": iterations, "val_error": val, "best_val_error": val, "val_top5_error": 0.5,
             "eval_split": "val", "tta": "shift", "val_error_tta": val - 1.0}
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*curve, final]))
    return path


def report(tmp_path: Path, name: str) -> str:
    out = tmp_path / name
    assert main(["reproduce", name, "--budget", "fast-32k", "--records", str(tmp_path / "records"),
                 "--out", str(out)]) == 0
    return (out / "report.md").read_text()


def verdict_of(text: str, claim_start: str) -> str:
    line = next(line for line in text.splitlines() if line.startswith(f"- {claim_start}"))
    return line.split("**")[1]


def test_every_seed_is_found_whatever_its_cadence_or_precision(tmp_path):
    records = tmp_path / "records"
    write_record(records, "resnet20", 0, 11.0, 6.0, ev=2000, precision="bf16")
    write_record(records, "resnet20", 1, 11.1, 6.1)
    write_record(records, "resnet56", 0, 9.3, 3.8)
    write_record(records, "resnet20", 2, 10.0, 5.0, iterations=16000)  # another budget: not this report's
    opts = Options(name="cifar-depth", budget="fast-32k")
    runs = recorded_runs(RunSpec("resnet20"), opts, records)
    assert [r.spec.seed for r in runs] == [0, 1] and [r.final_val_error for r in runs] == [11.0, 11.1]
    assert recorded_runs(RunSpec("plain20"), opts, records) == []
    write_record(records, "resnet56", 0, 9.0, 3.0, precision="bf16")  # the same seed twice: refused
    with pytest.raises(UsageError, match="both record seed 0 of ResNet-56"):
        recorded_runs(RunSpec("resnet56"), opts, records)


def test_two_seeds_of_each_net_or_not_separable(tmp_path):
    records = tmp_path / "records"
    for seed, (v20, v56) in enumerate([(11.0, 9.3), (11.1, 9.4)]):
        write_record(records, "resnet20", seed, v20, 6.0 + seed / 10)
        write_record(records, "plain20", seed, 12.0 + seed / 10, 8.0 + seed / 10)
    write_record(records, "resnet56", 0, 9.3, 3.8)
    text = report(tmp_path, "cifar-depth")
    assert "| ResNet-20 | 269,722 | 2 | 11.05 +/- 0.07 | 10.05 +/- 0.07 |" in text
    assert "| ResNet-56 | 853,018 | 1 | 9.34" not in text and "| ResNet-56 | 853,018 | 1 | 9.30 | 8.30 |" in text
    assert "| plain-20 | 269,722 | 2 | 12.05 +/- 0.07 |" in text and "curves only (Fig. 6)" in text
    assert verdict_of(text, "Deeper ResNets") == NOT_SEPARABLE and "fewer than two seeds of ResNet-56" in text
    assert "Not yet recorded at this budget: ResNet-32, ResNet-44, ResNet-110, plain-32" in text
    assert "JPEG quality 75" in text and "nothing was trained" in text

    write_record(records, "resnet56", 1, 9.4, 3.9)  # a second seed: now Welch's test on the seeds decides
    text = report(tmp_path, "cifar-depth")
    assert verdict_of(text, "Deeper ResNets") == AGREES and "Welch" in text


def test_a_net_that_did_not_train_gives_no_verdict(tmp_path):
    records = tmp_path / "records"
    for seed in (0, 1):
        write_record(records, "plain20", seed, 30.0 + seed, 25.0)
        write_record(records, "plain56", seed, 89.5, 89.0)  # near chance: it never started converging
        write_record(records, "resnet20", seed, 11.0 + seed / 10, 6.0)
    text = report(tmp_path, "cifar-degradation")
    assert verdict_of(text, "Deeper plain nets have higher training error") == NOT_TESTED
    assert "plain-56 did not train at this budget" in text and "ended near chance" in text
    assert (tmp_path / "cifar-degradation" / "degradation.png").stat().st_size > 0


@pytest.mark.parametrize("name", ["cifar-depth", "cifar-degradation", "layer-responses", "lesion"])
def test_the_checked_in_campaign_reports_rebuild_from_the_records(tmp_path, name):
    """The same numbers from the records in the repository alone."""
    out = tmp_path / name
    assert main(["reproduce", name, "--budget", "fast-32k", "--records", str(REPO / "results" / "records"),
                 "--out", str(out)]) == 0
    checked_in = json.loads((REPO / "results" / f"{name}-fast-32k" / "metrics.json").read_text())
    rebuilt = json.loads((out / "metrics.json").read_text())
    strip = {"runs"}  # absolute paths to the records
    assert {k: {f: v for f, v in m.items() if f not in strip} for k, m in rebuilt.items()} == \
        {k: {f: v for f, v in m.items() if f not in strip} for k, m in checked_in.items()}


# Fig. 7 and the lesion study from the records' analyses (analysis.json, written by the campaign as each run finishes).

def write_analysis(record: Path, stds: list[float], lesion: dict | None = None) -> None:
    analysis = {"images": 5000, "precision": "fp32", "layers": [f"l{i}" for i in range(len(stds))], "layer_std": stds}
    if lesion is not None:
        analysis["lesion"] = lesion
    (record / "analysis.json").write_text(json.dumps(analysis))


def test_fig7_from_the_records_tests_across_seeds_where_there_are_two(tmp_path):
    records = tmp_path / "records"
    for seed in (0, 1):  # plain-20 responds more than ResNet-20, layer by layer and on average, in both seeds
        write_analysis(write_record(records, "plain20", seed, 12.0, 8.0), [2.0 + i / 10 + seed / 100 for i in range(18)])
        write_analysis(write_record(records, "resnet20", seed, 11.0, 6.0), [1.0 + i / 20 + seed / 50 for i in range(18)])
    write_record(records, "resnet56", 0, 9.3, 3.8)  # recorded without its analyses: left out, and said
    text = report(tmp_path, "layer-responses")
    line = next(line for line in text.splitlines() if line.startswith("- ResNet-20 responds less"))
    assert line.split("**")[1] == AGREES and "(2 seeds)" in line and "one net" not in line
    assert "Not yet recorded with its analyses at this budget: plain-56, ResNet-56, plain-110, ResNet-110" in text
    assert "JPEG quality 75" in text and "all 5000 validation images" in text
    metrics = json.loads((tmp_path / "layer-responses" / "metrics.json").read_text())
    assert metrics["ResNet-20"]["seeds"] == [0, 1] and metrics["ResNet-20"]["mean_std"][1] == pytest.approx(1.445)

    (records / "plain20-1-500-fp32" / "analysis.json").unlink()  # one seed of plain-20: the test is over its layers
    line = next(line for line in report(tmp_path, "layer-responses").splitlines()
                if line.startswith("- ResNet-20 responds less"))
    assert "(18 layers)" in line and "the samples are the layers of one net per side, not independent draws" in line


def test_the_lesion_study_from_the_records(tmp_path):
    records = tmp_path / "records"
    for seed in (0, 1):
        res = {"intact": 9.0, "errors": [None if i in (9, 18) else 9.5 + seed / 10 for i in range(27)]}
        plain = {"intact": 12.0, "errors": [None if i in (9, 18) else 88.0 + seed for i in range(27)]}
        write_analysis(write_record(records, "resnet56", seed, 9.0, 3.0), [1.0] * 54, res)
        write_analysis(write_record(records, "plain56", seed, 12.0, 9.0), [2.0] * 54, plain)
    text = report(tmp_path, "lesion")
    assert verdict_of(text, "Deleting one block costs ResNet-56 less") == AGREES
    assert "(2 seeds)" in next(line for line in text.splitlines() if line.startswith("- Deleting one block"))
    assert verdict_of(text, "ResNet-56 degrades gracefully") == AGREES
    assert verdict_of(text, "plain-56 collapses") == AGREES and "blocks of one net" in text
    assert "ResNet-56 seeds 0: 0.50, 1: 0.60" in text
