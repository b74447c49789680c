"""Every checked-in report under results/ is written again, text and figures, from its own ``metrics.json`` alone
(``resnet reproduce NAME --from-metrics``): the same figures come back (same files, same pixel size, not blank) and
the report's text above its footer is the one checked in, so a change of the report or plotting code that would
alter a published number or drop a figure fails here. The README's Table 6 is the checked-in `fast-32k` report's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from resnet.cli import main
from resnet.experiments import RENDERERS

REPO = Path(__file__).resolve().parents[1]
REPORTS = sorted(p.parent for p in (REPO / "results").glob("*/metrics.json")
                 if json.loads((p.parent / "config.json").read_text()).get("name") in RENDERERS)


def _body(report: str) -> str:
    """The report above its figures and footer: what the numbers and verdicts say."""
    return report.split("\n## Figures", 1)[0].split("\n## Regenerate", 1)[0]


def test_every_renderable_report_is_checked_in():
    names = {json.loads((d / "config.json").read_text())["name"] for d in REPORTS}
    assert names == set(RENDERERS), set(RENDERERS) - names


@pytest.mark.parametrize("folder", REPORTS, ids=[d.name for d in REPORTS])
def test_report_and_figures_render_from_checked_in_metrics(folder, tmp_path):
    out = tmp_path / folder.name
    shutil.copytree(folder, out)
    for png in out.glob("*.png"):
        png.unlink()
    name = json.loads((folder / "config.json").read_text())["name"]
    assert main(["reproduce", name, "--from-metrics", str(out / "metrics.json")]) == 0

    checked_in = sorted(p.name for p in folder.glob("*.png"))
    assert checked_in and sorted(p.name for p in out.glob("*.png")) == checked_in
    for png in checked_in:
        with Image.open(out / png) as drawn, Image.open(folder / png) as published:
            assert drawn.size == published.size, png
            colours = drawn.convert("RGB").getcolors(maxcolors=1 << 16)
            assert colours is None or len(colours) > 16, f"{png} is nearly blank"
    report = (out / "report.md").read_text()
    for png in checked_in:
        assert f"({png})" in report, png
    assert _body(report) == _body((folder / "report.md").read_text())
    assert (out / "metrics.json").read_bytes() == (folder / "metrics.json").read_bytes()


def test_readme_table6_is_the_checked_in_fast_32k_report():
    """The README's Table 6 is the checked-in `fast-32k` report's numbers: each recorded net with its seed count and
    mean +/- std (the report's own formatting) of its single-image and 10-view validation errors, and every net of the
    table not recorded yet said to be in the campaign's plan. A finished run that lands in the report but not in the
    README, or the other way round, fails here."""
    from resnet.reporting.report import mean_std

    recorded = json.loads((REPO / "results" / "cifar-depth-fast-32k" / "metrics.json").read_text())
    nets = ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "plain20", "plain32", "plain44", "plain56"]
    rows = {}
    for line in (REPO / "README.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].lower().replace("-", "") in nets:
            rows[cells[0].lower().replace("-", "")] = cells[2]

    assert sorted(rows) == sorted(nets)
    for net in nets:
        if net not in recorded:
            assert rows[net] == "in the campaign's plan", net
            continue
        row = recorded[net]
        seeds = len(row["val_error"])
        expected = (f"{seeds} seed{'s' if seeds > 1 else ''}: {mean_std(row['val_error'])} / "
                    f"{mean_std(row['val_error_10view'])}")
        assert rows[net] == expected, net
