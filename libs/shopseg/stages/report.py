"""Stage `report`: one self-contained HTML file with the charts of the gold tables.

Written to `<lakehouse>/reports/report_<as_of>.html` (charts embedded as PNG
data URIs: the file opens anywhere, offline) and logged to the stage's MLflow
run. Each chart reads the table its stage writes; a table that does not exist
yet becomes a line saying which stage to run, not a failure.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
from collections.abc import Callable
from dataclasses import dataclass

from matplotlib.figure import Figure

from shopseg import charts
from shopseg import tables as t
from shopseg.files import write_text
from shopseg.pipeline import StageContext, latest


@dataclass
class Section:
    title: str
    caption: str
    tables: tuple[str, ...]
    draw: Callable[[], Figure]


def sections(ctx: StageContext) -> list[Section]:
    lake = ctx.lakehouse
    features, seed = ctx.config.segment.features, ctx.config.segment.seed
    min_group = ctx.config.privacy.min_group_size
    return [
        Section(
            "Segment shares over snapshots",
            "Share of users in each named segment, one bar per feature snapshot.",
            (t.USER_SEGMENTS.name,),
            lambda: charts.segment_sizes_figure(charts.segment_sizes_data(lake)),
        ),
        Section(
            "Segment profiles",
            "Each segment's median of a feature divided by the population's (lift); "
            "log2 colour scale, red above the population, blue below.",
            (t.SEGMENT_PROFILES.name,),
            lambda: charts.profile_heatmap_figure(charts.profile_lifts_data(lake)),
        ),
        Section(
            "Segments in two dimensions",
            "A sample of users on the first two principal axes of the segmentation "
            "features (prepared as the segment stage prepares them).",
            (t.USER_SEGMENTS.name, t.USER_FEATURES.name),
            lambda: charts.pca_figure(charts.pca_data(lake, features, seed=seed)),
        ),
        Section(
            "Choosing the number of segments",
            "Silhouette and stability (adjusted Rand index between restarts) for each "
            "algorithm and k; the chosen fit is circled.",
            (t.SEGMENT_SWEEP.name,),
            lambda: charts.sweep_figure(charts.sweep_data(lake)),
        ),
        Section(
            "RFM grid",
            "Buyers by recency score and frequency score (quintiles among buyers); a "
            f"cell of fewer than {min_group} buyers shows '<{min_group}' "
            "(privacy.min_group_size).",
            (t.USER_FEATURES.name,),
            lambda: charts.rfm_grid_figure(charts.rfm_grid_data(lake, min_group=min_group)),
        ),
        Section(
            "Recommendations against baselines",
            "Ranking metrics on the held-out part of the validation split: the chosen ALS "
            "fit, global popularity, popularity within the user's segment and item-item "
            "co-occurrence; the method marked 'served' is the one whose lists were shipped "
            "(a baseline that beats ALS is served instead).",
            (t.RECOMMENDATION_EVAL.name,),
            lambda: charts.recommendation_metrics_figure(charts.recommendation_metrics_data(lake)),
        ),
        Section(
            "Campaign uplift",
            "Conversion of treated minus holdout users per campaign and segment, with "
            "its confidence interval (an interval above zero is a measured effect). "
            f"Segments with fewer than {min_group} treated or holdout users are pooled "
            "into '(smaller segments)', and a cell still that small is not shown "
            "(privacy.min_group_size).",
            (t.CAMPAIGN_RESULTS.name,),
            lambda: charts.uplift_figure(charts.uplift_data(lake)),
        ),
        Section(
            "Whom a campaign changes",
            "The uplift models learned from a randomized send, on its held-out users: "
            "the Qini curve of each learner (incremental conversions when contacting "
            "the highest predicted uplift first) against random targeting; the chosen "
            "learner's measured uplift per predicted-uplift decile; on synthetic data, "
            "the planted incremental conversions of targeting by uplift, by purchase "
            "propensity, by a segment rule and at random, at equal contacts.",
            (t.UPLIFT_EVAL.name,),
            lambda: charts.uplift_model_figure(
                charts.uplift_eval_data(lake), charts.uplift_targeting_data(lake)
            ),
        ),
        Section(
            "Who will buy, who will churn",
            "Per propensity target, on the latest labelled cut-off (out of time): the share "
            "of positives reached by contacting the users with the highest scores first "
            "(the model against the RFM rule and BG/NBD's expected transactions), and the "
            "observed rate per predicted-probability bin before and after isotonic "
            "calibration, on users the calibration was not fitted on.",
            (t.PROPENSITY_EVAL.name,),
            lambda: charts.propensity_figure(charts.propensity_eval_data(lake)),
        ),
        Section(
            "Customer value by segment",
            "Expected lifetime value (BG/NBD x Gamma-Gamma) per segment, and the "
            "distribution of the probability that a customer is still active.",
            (t.CUSTOMER_VALUE.name, t.USER_SEGMENTS.name),
            lambda: charts.clv_figure(
                charts.clv_by_segment_data(lake), charts.p_alive_histogram_data(lake)
            ),
        ),
    ]


def png_data_uri(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2em; } .meta { color: #666; margin-top: 0; }
section { margin: 2.5em 0; } img { max-width: 100%; border: 1px solid #eee; }
.missing { color: #a33; }
"""


# Once the page has loaded, the number of charts the browser decoded (a test reads it).
SCRIPT = (
    "<script>window.addEventListener('load', () => {"
    " const shown = [...document.querySelectorAll('img.chart')]"
    ".filter(i => i.complete && i.naturalWidth > 0).length;"
    " document.documentElement.dataset.chartsRendered = String(shown); });</script>"
)


def render(title: str, meta: str, parts: list[tuple[Section, str | None, str | None]]) -> str:
    """The page: one section per chart, the chart as a data URI or a line saying why not."""
    body = []
    for section, uri, missing in parts:
        body.append(f"<section><h2>{html.escape(section.title)}</h2>")
        body.append(f"<p>{html.escape(section.caption)}</p>")
        if uri:
            alt = html.escape(section.title)
            body.append(f'<img class="chart" alt="{alt}" src="{uri}">')
        else:
            body.append(f'<p class="missing">{html.escape(missing or "not available")}</p>')
        body.append("</section>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f'<h1>{html.escape(title)}</h1><p class="meta">{html.escape(meta)}</p>'
        + "".join(body)
        + SCRIPT
        + "</body></html>\n"
    )


def run(ctx: StageContext) -> None:
    lake = ctx.lakehouse
    as_of = None
    if lake.exists(t.USER_FEATURES.name):
        as_of = latest(ctx.read(t.USER_FEATURES.name), t.AS_OF_DATE)
    as_of = as_of or dt.date.today()
    parts: list[tuple[Section, str | None, str | None]] = []
    for section in sections(ctx):
        absent = [name for name in section.tables if not lake.exists(name)]
        if absent:
            owners = sorted({t.table(name).owner for name in absent})
            missing = f"{', '.join(absent)} not written yet: run stage {', '.join(owners)}"
            ctx.log.info("report: %s skipped (%s)", section.title, missing)
            parts.append((section, None, missing))
            continue
        fig = section.draw()
        parts.append((section, png_data_uri(fig), None))
    drawn = sum(1 for _, uri, _ in parts if uri)
    page = render(
        f"shopseg report, snapshot {as_of}",
        f"Lakehouse {lake.root}; pipeline {ctx.pipeline_id}; generated "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; {drawn} of {len(parts)} charts.",
        parts,
    )
    path = f"{lake.root.rstrip('/')}/reports/report_{as_of}.html"
    write_text(path, page)
    ctx.run.log_text(page, "report.html")
    ctx.run.log_metrics({"charts": drawn})
    ctx.log.info("wrote %s: %d of %d charts", path, drawn, len(parts))
