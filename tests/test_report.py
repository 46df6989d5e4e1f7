"""Stage `report`: one self-contained HTML file whose charts a real browser renders."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient
from PIL import Image

from shopseg.stages import report

CHART = re.compile(r'<img class="chart" alt="([^"]+)" src="data:image/png;base64,([^"]+)">')


def browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if found := shutil.which(name):
            return found
    return None


@pytest.fixture(scope="module")
def report_file(default_lake):
    """The report `shopseg run` ends with, on the default pipeline's lakehouse."""
    (path,) = (default_lake / "reports").glob("report_*.html")
    return path


@pytest.mark.slow
def test_report_embeds_every_chart_and_is_logged(default_lake, report_file):
    page = report_file.read_text()
    charts = CHART.findall(page)
    assert [title for title, _ in charts] == [
        "Segment shares over snapshots",
        "Segment profiles",
        "Segments in two dimensions",
        "Choosing the number of segments",
        "RFM grid",
        "Recommendations against baselines",
        "Campaign uplift",
        "Whom a campaign changes",
        "Who will buy, who will churn",
        "Customer value by segment",
    ]
    for title, data in charts:
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        assert image.format == "PNG" and min(image.size) >= 300, title
        # A drawn chart, not an empty canvas: many distinct colours.
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20)) > 50, title
    assert 'class="missing"' not in page
    assert "http://" not in page and "https://" not in page, "self-contained: nothing fetched"

    store = f"sqlite:///{default_lake / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs(
        [client.get_experiment_by_name("shopseg/report").experiment_id],
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    assert runs[0].data.metrics["charts"] == 10
    logged = client.download_artifacts(runs[0].info.run_id, "report.html")
    assert Path(logged).read_text() == page


def test_a_missing_table_names_the_stage_to_run():
    section = report.Section("Campaign uplift", "caption", ("gold/campaign_results",), None)
    page = report.render("t", "m", [(section, None, "gold/campaign_results not written yet")])
    assert '<p class="missing">gold/campaign_results not written yet</p>' in page
    assert "<img" not in page


@pytest.mark.slow
def test_report_renders_in_a_headless_browser(report_file, tmp_path):
    chromium = browser()
    if chromium is None:
        pytest.skip("no Chromium on this machine (.ci/run installs Debian's chromium)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    url = report_file.as_uri()
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    # The page's own script counts the charts the browser decoded after load.
    assert 'data-charts-rendered="10"' in dom.stdout, dom.stdout[:300]

    shot = tmp_path / "report.png"
    done = subprocess.run(
        [chromium, *flags, "--window-size=1200,2400", f"--screenshot={shot}", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    screenshot = Image.open(shot).convert("RGB")
    assert screenshot.size == (1200, 2400)
    assert len(screenshot.getcolors(maxcolors=1 << 20)) > 200, "the charts are painted"


def test_customer_value_without_amounts_charts_expected_transactions():
    # Purchases without prices: BG/NBD valued everyone, every clv is null.
    import pandas as pd

    from shopseg import charts

    by_segment = pd.DataFrame(
        {
            "segment_name": ["Dormant", "New customers"],
            "customers": [120, 40],
            "mean_clv": [None, None],
            "median_clv": [None, None],
            "mean_transactions": [0.4, 1.9],
            "mean_p_alive": [0.6, 0.95],
            "at_risk_share": [0.3, 0.0],
        }
    )
    p_alive = pd.DataFrame({"low": [0.0, 0.5], "high": [0.5, 1.0], "customers": [50, 110]})
    fig = charts.clv_figure(by_segment, p_alive)
    png = Image.open(io.BytesIO(base64.b64decode(report.png_data_uri(fig).split(",", 1)[1])))
    assert png.size[0] > 0
    left = fig.axes[0]
    assert left.get_title().startswith("Expected transactions by segment")
    assert [bar.get_width() for bar in left.patches] == pytest.approx([0.4, 1.9])


def test_the_rfm_grid_hides_cells_below_the_minimum_group(spark, tmp_path):
    import datetime as dt

    import numpy as np

    from shopseg import charts
    from shopseg import tables as t
    from shopseg.delta import Lakehouse

    lake = Lakehouse(spark, str(tmp_path), "delta-rs")
    day = dt.date(2025, 6, 1)
    rows = [(u, day, 5, 5) for u in range(12)] + [(100 + u, day, 1, 2) for u in range(3)]
    rows += [(200, day, None, None)]
    lake.write(
        spark.createDataFrame(rows, "user_id long, as_of_date date, r_score int, f_score int"),
        t.USER_FEATURES.name,
    )
    grid = charts.rfm_grid_data(lake, min_group=10)
    assert grid.loc[5, 5] == 12 and np.isnan(grid.loc[1, 2])
    texts = {a.get_text() for a in charts.rfm_grid_figure(grid).axes[0].texts}
    assert "12" in texts and "<10" in texts and "3" not in texts
    assert charts.rfm_grid_data(lake).loc[1, 2] == 3
