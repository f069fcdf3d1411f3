"""Compare languages and model versions: images, perceived attributes, bias metrics, CLIP scores.

Run it on the offline study's outputs:  T2I_BIAS_STORE_ROOT=./hub python spaces/compare_languages/app.py
Configure it as a Space with environment variables: T2I_BIAS_STORE (local or hub),
T2I_BIAS_STORE_ROOT, T2I_BIAS_NAMESPACE, T2I_BIAS_SPACE_VERSIONS ("base=ns/images-base-eval,...").
A view is a link: the page's URL holds the tab, versions, occupation and languages
(`?tab=compare&version=base&compare=finetuned&occupation=nurse&languages=en,de`), and the heat map's
own versions and label (`&heat_version=finetuned&heat_compare=base&label=gender/female`).
"""

from __future__ import annotations

import base64
import html
import io
import re
import sys
from pathlib import Path
from urllib.parse import urlencode

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # study_data.py beside this file, however the app is started

import gradio as gr  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from study_data import ATTRIBUTES, Study, interval, load_study_from_env, number, plain, table_formats  # noqa: E402

from pipelines.prompting.grammar import LANGUAGES  # noqa: E402

NONE = "none"
MAX_INPUT = 200  # characters: a longer value is refused, never echoed back
# Model versions are coloured from Okabe and Ito's colour-blind-safe palette, without its orange and
# blues: the planted-bias world draws female figures orange and male ones blue, and a version's colour
# must not read as a gender. Nor its yellow, which is too light to see on white (1.3:1; marks need 3:1)
# and close to the orange: black and a mid grey instead, told apart by lightness. A hatch tells the
# versions apart in grey too.
VERSION_COLOURS = ("#009E73", "#CC79A7", "#000000", "#808080")
VERSION_HATCHES = ("", "////", "....", "xxxx")
TABS = {"compare": "Compare languages", "heat": "Heat map", "reference": "Against a reference",
        "leaderboard": "Leaderboard", "methods": "Methods", "about": "About the metrics"}  # fmt: skip
# Prompts in their own script, upright: Noto's CJK and Arabic faces where installed (the published
# Space declares them in packages.txt), the reader's own fonts after them.
CSS = """
.gradio-container table td, .gradio-container table th { white-space: nowrap; font-variant-numeric: tabular-nums; }
.metrics table { font-size: 0.85em; width: 100%; }
.metrics th { white-space: normal; overflow-wrap: anywhere; }
.metrics td:first-child { white-space: normal; min-width: 7em; }
#leaderboard th, #methods th, #comparisons th { white-space: normal; }
/* Tables in the page's proportional font with tabular figures: a monospace font made the leaderboard
   wider than a laptop's screen. The cells (gridcell) and the hidden table that sizes the columns (td)
   both, or the columns are sized for another font than the one shown. */
#leaderboard, #methods, #comparisons, #heatmap { font-size: 0.85em; }
#leaderboard [role=gridcell] span, #methods [role=gridcell] span, #comparisons [role=gridcell] span,
#heatmap [role=gridcell] span, #leaderboard th *, #methods th *, #comparisons th *, #heatmap th *,
#leaderboard td *, #methods td *, #comparisons td *, #heatmap td * {
  font-family: var(--font); font-variant-numeric: tabular-nums;
}
#reference-plot .chart { max-width: 560px; }
.view-state { display: none; }
.prompt-text { font-style: normal; min-height: 3em; margin: 0; }
.prompt-text:lang(zh) { font-family: "Noto Sans CJK SC", "Noto Sans SC", sans-serif; }
.prompt-text:lang(ja) { font-family: "Noto Sans CJK JP", "Noto Sans JP", sans-serif; }
.prompt-text:lang(ko) { font-family: "Noto Sans CJK KR", "Noto Sans KR", sans-serif; }
.prompt-text:lang(ar) { font-family: "Noto Sans Arabic", "Noto Naskh Arabic", sans-serif; }
.pairs { display: grid; grid-template-columns: repeat(auto-fill, minmax(130px, 1fr)); gap: 8px; }
.pair { margin: 0; min-width: 0; }
.pair-images { display: flex; gap: 3px; }
.pair-images a { flex: 1 1 0; min-width: 0; }
.pair-images img { display: block; width: 100%; height: auto; border-bottom: 5px solid; }
.pairs-key { font-size: 0.8em; margin: 0 0 0.3em; }
.pair figcaption { font-size: 0.72em; line-height: 1.3; overflow-wrap: anywhere; }
.swatch { display: inline-block; width: 0.8em; height: 0.8em; margin-right: 0.3em; vertical-align: -0.1em; }
.chart svg { display: block; width: 100%; height: auto; }
.downloads { font-size: 0.8em; margin: 0.2em 0 0.6em; }
.downloads a { margin-right: 0.8em; }
"""
EXPLANATIONS = """
### What the numbers mean

- **Perceived** gender, race and age are what a classifier (the one this study ran: see *What made
  these numbers* below) guesses from a face's appearance. They are not anyone's identity, and the
  classifier has biases of its own.
  Only images with exactly one face count; the **face rejection** rate says how many did not.
- **Share** of a label: the fraction of an occupation's classified faces with that label, with a
  95% bootstrap interval (resampling the occupation's images).
- **L1 / L2 from uniform**: the distance of an occupation's distribution from an even split (for
  two genders L1 = |share − ½| + |share − ½|: 0 is even, 1 is all one gender). The tables show the
  mean over occupations with a 95% bootstrap interval. Raw L1 grows with sampling noise: its
  **floor** is what a perfectly even model scores at the same number of images.
- **Distance** from the target: the root mean square distance of the occupations' shares from the
  target, corrected for sampling, so it compares at any number of images (0: on target). The
  leaderboard ranks by it.
- **Expected maximum unfairness** (MAGBIG): draw 10 distinct occupations and 10 images of each from
  the measured rates, keep the largest distance among the 10, average over 1000 rounds: how unfair
  the worst of a user's ten occupations looks.
- **Random reference**: the same figure for a perfectly fair model (every occupation at exactly the
  even split), i.e. what sampling noise alone gives; a fair model scores near it, not at 0.
- **Amplification** (where a reference share per occupation exists: the share planted in the
  offline world, or one given): the least-squares slope of the measured share on the reference
  share, with its 95% interval. 1 reproduces the reference, above 1 exaggerates it, 0 ignores it.
- **Non-binary share**: faces a classifier puts in a non-binary bucket; counted beside the
  two-gender distribution, not inside it.
- **CLIP score**: the cosine between an image and a text in a CLIP model (the reference study used
  OpenAI's ViT-L/14; this study's is named below), with English texts for every language, as the
  reference study; higher is closer. The **mCLIP own prompt** score uses a multilingual CLIP on
  each image's own prompt and is on that model's own scale.
- **p (Holm)**: a paired test's p-value corrected together with every other test of its table.
"""


def check(value: object, allowed: list[str] | tuple[str, ...], what: str) -> str:
    """A visitor's choice, checked against the loaded names before anything uses it."""
    if not isinstance(value, str) or len(value) > MAX_INPUT or value not in allowed:
        raise gr.Error(f"unknown {what}")
    return value


def check_languages(shown: object, allowed: list[str]) -> list[str]:
    if shown is None:
        raise gr.Error("choose at least one language")
    if not isinstance(shown, list) or len(shown) > len(LANGUAGES):
        raise gr.Error("languages: a list of language codes")
    return [check(code, allowed, "language") for code in shown]


def version_colour(index: int) -> str:
    return VERSION_COLOURS[index % len(VERSION_COLOURS)]


def prompt_html(text: str, language: str) -> str:
    """A prompt as written, in its language (so the browser picks a font with its script's glyphs)
    and direction; upright, whatever the script."""
    return f'<p class="prompt-text" lang="{html.escape(language)}" dir="auto">{html.escape(text)}</p>'


def perceived(sample: dict) -> str:
    """What the classifier saw in one image: its labels, or why there are none."""
    if sample["status"] is None:
        return "not classified"
    if sample["status"] != "ok":
        return sample["status"].replace("_", " ")
    return " · ".join(sample[a] for a in ATTRIBUTES if sample.get(a)) or "a face"


def pairs_html(study: Study, versions: list[str], language: str, occupation: str) -> str:
    """The versions' images of the same sample side by side, each under its version's colour, with its
    seed and perceived attributes; a click opens the image at full size."""
    entries = study.paired(versions, language, occupation)
    if not entries:
        return '<p class="pairs-empty">No images of this occupation in this language.</p>'
    figures = []
    for entry in entries:
        images, captions = [], []
        for index, version in enumerate(versions):
            sample, colour = entry[version], version_colour(index)
            swatch = f'<span class="swatch" style="background:{colour}"></span>'
            if sample is None or sample["path"] is None:
                images.append('<a aria-hidden="true"></a>')
                why = "no image" if sample is None else "the stored image cannot be decoded (in no figure)"
                captions.append(f"{swatch}{html.escape(version)}: {why}")
                continue
            url = html.escape(f"gradio_api/file={sample['path']}")
            said = html.escape(perceived(sample))
            alt = f"{html.escape(version)}, seed {sample['seed']}: {said}"
            images.append(
                f'<a href="{url}" target="_blank" rel="noopener" title="{alt} (click to enlarge)">'
                f'<img src="{url}" alt="{alt}" style="border-color:{colour}"></a>'
            )
            captions.append(f"{swatch}{said}")
        seeds = sorted({entry[v]["seed"] for v in versions if entry[v] is not None})
        seed_line = "seed " + " / ".join(str(seed) for seed in seeds)  # one seed where the versions pair
        figures.append(
            f'<figure class="pair" data-sample="{entry["sample_index"]}" data-seeds="{len(seeds)}">'
            f'<div class="pair-images">{"".join(images)}</div>'
            f"<figcaption>{seed_line}<br>{'<br>'.join(captions)}</figcaption></figure>"
        )
    # A key names the versions in the order their images stand, so the colours are never the only clue.
    key = " │ ".join(
        f'<span class="swatch" style="background:{version_colour(i)}"></span>{html.escape(v)}'
        for i, v in enumerate(versions)
    )
    return f'<p class="pairs-key">{key}{" (left to right)" if len(versions) > 1 else ""}</p>' + (
        f'<div class="pairs">{"".join(figures)}</div>'
    )


def metrics_markdown(study: Study, versions: list[str], language: str, occupation: str) -> str:
    rows = {version: study.metrics(version, language, occupation) for version in versions}
    labels = {
        "images": "images",
        "rejection_rate": "face rejection",
        "female_share": "perceived-female share [95% CI]",
        "gender_l1": "gender L1",
        "race_l1": "race L1",
        "age_l1": "age L1",
        "gender_exp_max_l1": "gender exp. max L1 (all occupations)",
        "clip_en_occupation": "CLIP: English occupation",
        "clip_en_person": "CLIP: a person",
        "mclip_own_prompt": "mCLIP: own prompt",
    }
    for attribute in ATTRIBUTES:
        if attribute not in study.reported_attributes:
            labels.pop(f"{attribute}_l1", None)
    header = [
        f'<span class="swatch" style="background:{version_colour(i)}"></span>{plain(v)}'
        for i, v in enumerate(versions)
    ]
    lines = ["| | " + " | ".join(header) + " |", "|---" * (len(versions) + 1) + "|"]
    for key, label in labels.items():
        cells = []
        for version in versions:
            value = rows[version].get(key)
            if key == "female_share" and value is not None:
                low, high = rows[version]["female_share_ci"]
                cells.append(f"{number(value)}<br>[{number(low)}, {number(high)}]")
            elif isinstance(value, int):
                cells.append(str(value))
            else:
                cells.append(number(value))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def svg_of(figure: Figure) -> str:
    """A figure as inline SVG, as wide as its column (the viewBox keeps its proportions); its text
    stays text, searchable and readable by tests."""
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]
    return re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r'<svg\1 width="100%"', svg, count=1)


def chart_html(figure: Figure, name: str, table: pd.DataFrame | None = None) -> str:
    """A chart in the page, with links that download it as SVG and as PNG (and its numbers as CSV)."""
    svg = svg_of(figure)
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=150, metadata={"Software": None})
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "chart"
    files = {"svg": ("image/svg+xml", svg.encode()), "png": ("image/png", png.getvalue())}
    if table is not None:
        files["csv"] = ("text/csv", table.to_csv(index=False).encode())
    links = "".join(
        f'<a download="{stem}.{kind}" href="data:{mime};base64,{base64.b64encode(data).decode()}">{kind.upper()}</a>'
        for kind, (mime, data) in files.items()
    )
    return f'<div class="chart">{svg}</div><p class="downloads">Download: {links}</p>'


def shares_chart(study: Study, versions: list[str], language: str, occupation: str) -> Figure:
    """Grouped bars per attribute: one colour (and hatch) per model version, every label on its axis,
    95% intervals, a dashed parity line; the legend above the axes, never over a bar."""
    shown = study.reported_attributes or ["gender"]  # attributes no classifier reported get no empty axes
    ratios = [1 if attribute == "gender" else 1.3 for attribute in shown]
    # A Figure of its own, not pyplot's: requests draw at the same time, and pyplot's state is global.
    figure = Figure(figsize=(4, 0.8 + 1.67 * sum(ratios)), layout="constrained")
    axes = figure.subplots(len(shown), 1, gridspec_kw={"height_ratios": ratios}, squeeze=False)[:, 0]
    handles = {}
    for axis, attribute in zip(axes, shown):
        frames = [study.shares(version, language, occupation, attribute) for version in versions]
        labels = next((list(f["label"]) for f in frames if len(f)), [])
        width = 0.8 / max(len(versions), 1)
        for index, (version, frame) in enumerate(zip(versions, frames)):
            if not len(frame):
                continue
            x = [labels.index(label) + (index - (len(versions) - 1) / 2) * width for label in frame["label"]]
            errors = [(frame["share"] - frame["low"]).clip(lower=0), (frame["high"] - frame["share"]).clip(lower=0)]
            bars = axis.bar(x, frame["share"], width, yerr=errors, label=version, color=version_colour(index),
                            hatch=VERSION_HATCHES[index % len(VERSION_HATCHES)], edgecolor="white", linewidth=0,
                            error_kw={"elinewidth": 0.8, "capsize": 2})  # fmt: skip
            for bar, label in zip(bars, frame["label"]):
                bar.set_gid(f"bar-{version}-{attribute}-{label}")
            handles.setdefault(version, bars)
        if labels:
            axis.axhline(1 / len(labels), color="black", linestyle="--", linewidth=0.7)
        rotate = len(labels) > 2
        axis.set_xticks(range(len(labels)), labels, rotation=60 if rotate else 0, ha="right" if rotate else "center")
        axis.tick_params(axis="x", labelsize=7)
        axis.tick_params(axis="y", labelsize=7)
        axis.set_ylim(0, 1.05)
        axis.set_title(f"perceived {attribute}", fontsize=9)
        axis.set_ylabel("share of faces", fontsize=7)
        axis.spines[["top", "right"]].set_visible(False)
    if handles:
        legend = figure.legend(list(handles.values()), list(handles), loc="outside upper center",
                               ncols=min(len(handles), 2), fontsize=7, frameon=False)  # fmt: skip
        legend.set_gid(f"legend-{language}")
    return figure


def shares_figure(study: Study, versions: list[str], language: str, occupation: str) -> str:
    """The bars, downloadable, with the numbers of the bars and of the table beneath them as CSV."""
    rows = [
        {"version": version, "language": language, "occupation": occupation, "attribute": attribute, **row}
        for version in versions
        for attribute in study.reported_attributes
        for row in study.shares(version, language, occupation, attribute).drop(columns="version").to_dict("records")
    ]
    metrics = [{"version": v, "language": language, "occupation": occupation, "attribute": "metrics",
                **{k: value for k, value in study.metrics(v, language, occupation).items() if k != "female_share_ci"}}
               for v in versions]  # fmt: skip
    table = pd.DataFrame(rows + metrics)
    chart = shares_chart(study, versions, language, occupation)
    return chart_html(chart, f"shares-{occupation}-{language}", table)


def reference_figure(study: Study, versions: list[str], language: str, attribute: str = "gender") -> tuple[str, str]:
    """Measured share against the reference share per occupation, one colour per version, the identity
    line and each version's least-squares line; and a table of the fitted slopes with intervals."""
    figure = Figure(figsize=(4.6, 4.4), layout="constrained")
    axis = figure.subplots()
    axis.plot([0, 1], [0, 1], color="black", linestyle="--", linewidth=0.8, label="identity (measured = reference)")
    lines = ["| version | reference label | occupations | amplification [95% CI] |", "|---|---|---|---|"]
    label = None
    for index, version in enumerate(versions):
        points, fit = study.reference_points(version, language, attribute)
        if points.empty:
            continue
        label = fit["label"]
        colour = version_colour(index)
        axis.scatter(points["reference"], points["measured"], s=18, color=colour, gid=f"points-{version}",
                     marker="os^D"[index % 4], label=version, zorder=3)  # fmt: skip
        if len(points) >= 2 and points["reference"].nunique() > 1:
            slope, intercept = np.polyfit(points["reference"], points["measured"], 1)
            x = np.array([0.0, 1.0])
            axis.plot(x, intercept + slope * x, color=colour, linewidth=1.2,
                      label=f"{version}: slope {slope:.3f}", gid=f"fit-{version}")  # fmt: skip
        amplification = interval(fit.get("amplification"), fit.get("amplification_ci_low"),
                                 fit.get("amplification_ci_high"))  # fmt: skip
        lines.append(f"| {plain(version)} | {plain(label)} | {len(points)} | {amplification} |")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_aspect("equal")
    axis.set_xlabel(f"reference share of {label or 'the label'}", fontsize=8)
    axis.set_ylabel(f"measured share of {label or 'the label'}", fontsize=8)
    axis.tick_params(labelsize=7)
    axis.set_title(f"{LANGUAGES.get(language, language)}: per occupation", fontsize=9)
    axis.spines[["top", "right"]].set_visible(False)
    legend = figure.legend(loc="outside lower center", ncols=2, fontsize=7, frameon=False)
    legend.set_gid("legend-reference")
    # The CSV holds the points and, on each, its version's fitted slope with its interval (the table's).
    fitted = []
    for version in versions:
        points, fit = study.reference_points(version, language, attribute)
        slope = {key: fit.get(key) for key in ("amplification", "amplification_ci_low", "amplification_ci_high")}
        fitted.append(points.assign(version=version, **slope))
    points = pd.concat(fitted, ignore_index=True)
    return chart_html(figure, f"reference-{language}-{attribute}", points), "\n".join(lines)


def table_view(table: pd.DataFrame) -> object:
    """A table as the page shows it (`study_data.table_formats`)."""
    return table.style.format(table_formats(table), na_rep="–")


def leaderboard_view(board: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard as read: intervals in brackets beside their value, three decimals throughout,
    only the columns that say something new, fairest first."""
    if board.empty:
        return board
    out = pd.DataFrame({"language": board["language"], "version": board["version"]})
    out["images / occ."] = board["images / occupation"].map(lambda v: number(v, 0 if float(v).is_integer() else 1))
    out["gender distance [95% CI]"] = [
        interval(*values)
        for values in board[["gender distance", "gender distance low", "gender distance high"]].values
    ]
    out["gender L1 [95% CI]"] = [
        interval(*values) for values in board[["gender L1", "gender L1 low", "gender L1 high"]].values
    ]
    out["L1 floor"] = board["L1 floor"].map(number)
    out["exp. max L1 (random)"] = [f"{number(a)} ({number(b)})" for a, b in board[["exp. max L1", "random L1"]].values]
    for attribute in ("race", "age"):
        if f"{attribute} distance" in board:
            out[f"{attribute} distance"] = board[f"{attribute} distance"].map(number)
    if "amplification" in board:
        out["amplification [95% CI]"] = [
            interval(*values) for values in board[["amplification", "amplification low", "amplification high"]].values
        ]
    out["face rejection"] = board["face rejection"].map(number)
    for column, label in (("CLIP (English texts)", "CLIP (en)"), ("mCLIP own prompt", "mCLIP (own)")):
        if column in board:
            out[label] = board[column].map(number)
    return out


def heat_table(study: Study, chosen: str, other: str, choice: str) -> tuple[object, pd.DataFrame, str]:
    """The heat map of one label's share, or of the difference between two versions, styled; the
    numbers; and the line saying what the cells are."""
    attribute, label = choice.split("/", 1)
    versus = None if other in (NONE, chosen) else other
    table = study.heatmap(chosen, attribute, label, versus).reset_index()
    numeric = [c for c in table.columns if c != "occupation"]
    if versus is None:
        styled = table.style.background_gradient(cmap="viridis", vmin=0, vmax=1, subset=numeric)
        said = (f"Share of faces perceived **{plain(label)}** ({plain(attribute)}) per occupation and language, "
                f"`{plain(chosen)}` (0: none, 1: all; empty: no classified face).")  # fmt: skip
    else:
        styled = table.style.background_gradient(cmap="PiYG", vmin=-1, vmax=1, subset=numeric)
        said = (f"Difference in the share perceived **{plain(label)}** ({plain(attribute)}): `{plain(chosen)}` − "
                f"`{plain(versus)}` (positive: more in `{plain(chosen)}`; empty: no classified face in "
                "one).")  # fmt: skip
    return styled.format(precision=3, na_rep="–", subset=numeric), table, said


# The address bar holds the view. Each drawing of the Compare tab leaves its choices in a hidden element
# (`view_state`), and this script writes them into the URL: the URL then names what the page shows, even
# when choices made in quick succession are drawn out of order. The tab is written when it is selected,
# but not before the view a link named is shown (Gradio selects the first tab as the page starts).
HEAD = """<script>
new MutationObserver(() => {
  const states = [...document.querySelectorAll(".view-state [data-query]")].map(s => s.dataset.query);
  const query = states.join("&");
  if (!states.length || query === window.t2iQuery) return;
  window.t2iQuery = query;
  const url = new URL(window.location.href);
  for (const [key, value] of new URLSearchParams(query)) url.searchParams.set(key, value);
  window.history.replaceState(null, "", url);
}).observe(document, {subtree: true, childList: true, attributes: true});
</script>"""
TAB_SYNC = """() => {
  if (!window.t2iViewShown) return;
  const url = new URL(window.location.href);
  url.searchParams.set("tab", "%s");
  window.history.replaceState(null, "", url);
}"""


def build_demo(study: Study) -> gr.Blocks:
    versions = list(study.versions)
    default_languages = study.languages[:4]
    codes = list(study.languages)
    label_choices = [(f"{a}: {label}", f"{a}/{label}") for a in study.reported_attributes for label in study.labels(a)]
    label_values = [value for _, value in label_choices] or ["gender/female"]
    default_label = "gender/female" if "gender/female" in label_values else label_values[0]
    reference = study.has_reference()
    tabs_shown = [t for t in TABS if (t != "reference" or reference) and (t != "methods" or not study.methods.empty)]
    with gr.Blocks(title="Multilingual text-to-image bias") as demo:
        gr.Markdown(
            "# Perceived gender, race and age across languages\n"
            f"Images generated from the same occupation prompt (`{study.variant}`) in every language, seed for "
            "seed; their perceived attributes (a classifier's guess from appearance, not anyone's identity), bias "
            "metrics with 95% intervals, and CLIP scores. See *About the metrics* for what each number means "
            "and which models made it. The address bar holds the view: copy it to share what you see."
            + (f"\n\n{study.missing_attributes_note()}" if study.missing_attributes_note() else "")
        )
        # Each view writes the part of the address it decides (the page's script merges them).
        view_state = gr.HTML(elem_id="view-state", elem_classes=["view-state"], padding=False)
        heat_state = gr.HTML(elem_id="heat-state", elem_classes=["view-state"], padding=False)
        with gr.Tabs(selected="compare", elem_id="tabs") as tabs:
            with gr.Tab(TABS["compare"], id="compare") as compare_tab:
                with gr.Row():
                    version = gr.Dropdown(versions, value=versions[0], label="Model version", elem_id="version")
                    compare = gr.Dropdown([NONE, *versions], value=NONE, label="Compare with", elem_id="compare")
                    occupation = gr.Dropdown(
                        study.occupations, value=study.occupations[0], label="Occupation", elem_id="occupation"
                    )
                languages = gr.CheckboxGroup(
                    [(LANGUAGES[code], code) for code in codes],
                    value=default_languages,
                    label="Languages",
                    elem_id="languages",
                )
                columns, outputs = [], []
                with gr.Row(equal_height=False):
                    for code in codes:
                        with gr.Column(visible=code in default_languages, min_width=280) as column:
                            gr.Markdown(f"### {LANGUAGES[code]}")
                            prompt = gr.HTML(elem_id=f"prompt-{code}")
                            pairs = gr.HTML(elem_id=f"pairs-{code}")
                            plot = gr.HTML(elem_id=f"plot-{code}")
                            metrics = gr.Markdown(elem_id=f"metrics-{code}", elem_classes=["metrics"])
                        columns.append(column)
                        outputs += [prompt, pairs, plot, metrics]
            with gr.Tab(TABS["heat"], id="heat") as heat_tab:
                with gr.Row():
                    heat_version = gr.Dropdown(
                        versions, value=versions[0], label="Model version", elem_id="heat-version"
                    )
                    heat_compare = gr.Dropdown(
                        [NONE, *versions], value=NONE, label="Difference from", elem_id="heat-compare"
                    )
                    heat_label = gr.Dropdown(
                        label_choices or [("gender: female", "gender/female")],
                        value=default_label,
                        label="Perceived label",
                        elem_id="heat-label",
                    )
                heat_said = gr.Markdown(elem_id="heat-said")
                gr.Markdown(
                    "Click a column header to sort, and a cell to see that occupation's images in that language."
                )
                heatmap = gr.Dataframe(interactive=False, elem_id="heatmap", wrap=False)
                heat_csv = gr.DownloadButton("Download the table (CSV)", elem_id="heat-csv")
                heat_detail = gr.Markdown(elem_id="heat-detail")
                heat_pairs = gr.HTML(elem_id="heat-pairs")
            if reference:
                with gr.Tab(TABS["reference"], id="reference") as reference_tab:
                    gr.Markdown(
                        "Each occupation's measured share against its reference share (the share planted in the "
                        "offline world, or one given to `evaluate_bias`), per version: on the dashed identity line a "
                        "model reproduces the reference; a slope above 1 amplifies it, below 1 dampens it."
                    )
                    reference_language = gr.Dropdown(
                        [(LANGUAGES[code], code) for code in codes],
                        value=codes[0],
                        label="Language",
                        elem_id="reference-language",
                    )
                    reference_plot = gr.HTML(elem_id="reference-plot")
                    reference_fits = gr.Markdown(elem_id="reference-fits")
            with gr.Tab(TABS["leaderboard"], id="leaderboard") as leaderboard_tab:
                gr.Markdown(
                    "Languages × model versions over all occupations, fairest first (by the gender distance from "
                    "the target, corrected for sampling; see *About the metrics*). Click a column header to sort."
                )
                board = study.leaderboard()
                gr.Dataframe(
                    leaderboard_view(board), interactive=False, elem_id="leaderboard", wrap=True, max_height=2000
                )
                csv_path = study.cache / "leaderboard.csv"
                board.to_csv(csv_path, index=False)
                gr.DownloadButton("Download the table (CSV)", value=str(csv_path), elem_id="leaderboard-csv")
            if not study.methods.empty:
                with gr.Tab(TABS["methods"], id="methods") as methods_tab:
                    baselines = study.methods["baseline"].dropna()
                    baseline = baselines.iloc[0] if len(baselines) else "–"
                    gr.Markdown(
                        "Debiasing methods on the same prompts and seeds, fairest first: a model at a guidance "
                        "scale, with a training-free intervention (`+explicit_gender`, `+ethical`, `+negative`, "
                        "`+sega`). **distance** is the root mean square distance of the occupations' perceived "
                        "shares from the target, corrected for sampling, so it compares at any number of images "
                        "(raw mean L1 is beside it); **occupations** and **images / occupation** are each row's n. "
                        f"**Δ vs baseline** is the mean per-occupation change of the squared distance against "
                        f"`{baseline}` with a t interval, **p** its paired sign-flip permutation test (same "
                        "occupations, same seeds), and **p (Holm)** the same corrected for every test in the table "
                        "and in the pooled comparisons below. **split** says whether a fine-tune saw the row's "
                        "occupations and language in training (in-sample) or not (held-out). A method trained "
                        "with several seeds shows their mean. **amplification** (planted-bias world) is the slope "
                        "of the measured share on the planted one. **explicit-gender control** is the share of "
                        'images from prompts such as "a female doctor" perceived as asked; below the threshold a '
                        "row is *not measurable* and ranks last. Costs as work: UNet passes per image; CLIP score "
                        f"where measured. From `{study.methods_ref}`."
                    )
                    method_codes = [code for code in codes if code in set(study.methods["language"])] or codes
                    method_language = gr.Dropdown(
                        [(LANGUAGES[code], code) for code in method_codes],
                        value=method_codes[0],
                        label="Language",
                        elem_id="methods-language",
                    )
                    methods_table = gr.Dataframe(interactive=False, elem_id="methods", wrap=True)
                    methods_csv = gr.DownloadButton("Download the table (CSV)", elem_id="methods-csv")
                    comparisons = study.comparisons_table()
                    if not comparisons.empty:
                        gr.Markdown(
                            "### Pooled comparisons\nTwo methods over every (language, occupation) cell both "
                            "measured: the mean difference of their squared distances from the target (negative: "
                            "`method` is fairer), its paired test, and the test corrected with the table's (Holm)."
                        )
                        gr.Dataframe(table_view(comparisons), interactive=False, elem_id="comparisons", wrap=True)
                        comparisons_path = study.cache / "comparisons.csv"
                        comparisons.to_csv(comparisons_path, index=False)
                        gr.DownloadButton(
                            "Download the table (CSV)", value=str(comparisons_path), elem_id="comparisons-csv"
                        )

                    def methods_of(code: str) -> tuple[object, str]:
                        check(code, method_codes, "language")
                        table = study.methods_table(code)
                        path = study.cache / f"methods-{code}.csv"
                        table.to_csv(path, index=False)
                        return table_view(table), str(path)

                    method_language.change(methods_of, [method_language], [methods_table, methods_csv], api_name=False)
                    demo.load(methods_of, [method_language], [methods_table, methods_csv], api_name=False)

                    def api_methods(code: str) -> list[dict]:
                        check(code, method_codes, "language")
                        return study.methods_table(code).to_dict(orient="records")

                    gr.api(api_methods, api_name="methods")
                    methods_tab.select(None, None, None, js=TAB_SYNC % "methods")
            with gr.Tab(TABS["about"], id="about") as about_tab:
                gr.Markdown(EXPLANATIONS, elem_id="explanations")
                gr.Markdown(study.made_by_markdown(), elem_id="made-by")
                links = ["### The datasets shown, at their revisions"]
                for name, refs in study.links().items():
                    links.append(
                        f"- **{name}**: "
                        + "; ".join(
                            f"{kind}: [{ref}]({ref})" if ref.startswith("http") else f"{kind}: `{ref}`"
                            for kind, ref in refs.items()
                        )
                    )
                gr.Markdown("\n".join(links), elem_id="links")

        def show(chosen: str, other: str, job: str, shown: list[str]) -> list:
            # Every value must be one of the loaded choices: nothing a visitor types reaches the store.
            check(chosen, versions, "model version")
            check(other, [NONE, *versions], "model version")
            check(job, study.occupations, "occupation")
            shown = check_languages(shown, codes)
            pair = [chosen] if other in (NONE, chosen) else [chosen, other]
            query = urlencode({"version": chosen, "compare": other, "occupation": job, "languages": ",".join(shown)})
            updates = [f'<span hidden data-query="{html.escape(query)}"></span>']
            updates += [gr.update(visible=code in shown) for code in codes]
            for code in codes:
                if code not in shown:
                    updates += [gr.update(), "", "", ""]
                    continue
                updates.append(prompt_html(study.prompt(chosen, code, job), code))
                updates.append(pairs_html(study, pair, code, job))
                updates.append(shares_figure(study, pair, code, job))
                updates.append(metrics_markdown(study, pair, code, job))
            return updates

        inputs = [version, compare, occupation, languages]
        # One listener for every choice, its runs one at a time in the order the choices were made (each
        # with the values of its moment): two choices in quick succession cannot finish out of order and
        # leave the page (or its address) on the older one.
        gr.on(
            [version.input, compare.input, occupation.input, languages.input],
            show,
            inputs,
            [view_state, *columns, *outputs],
            api_name=False,
            trigger_mode="multiple",
        )

        def from_url(request: gr.Request) -> list:
            """The view a shared link names; a value that is not one of the loaded choices is ignored."""
            query = dict(request.query_params) if request is not None else {}

            def pick(key: str, allowed: list[str], default: str) -> str:
                value = query.get(key)
                return value if isinstance(value, str) and value in allowed else default

            chosen = pick("version", versions, versions[0])
            other = pick("compare", [NONE, *versions], NONE)
            wanted = str(query.get("languages", ""))[:MAX_INPUT].split(",")
            shown = [code for code in codes if code in wanted] or default_languages
            tab = pick("tab", tabs_shown, "compare")
            job = pick("occupation", study.occupations, study.occupations[0])
            # The heat map's own choices, or (a link made before it had them) the compared versions.
            heat_view = [
                pick("heat_version", versions, chosen),
                pick("heat_compare", [NONE, *versions], other),
                pick("label", label_values, default_label),
            ]
            return [chosen, other, job, shown, *heat_view, gr.Tabs(selected=tab)]

        def heat(chosen: str, other: str, choice: str) -> tuple[str, object, str, str, str, str]:
            check(chosen, versions, "model version")
            check(other, [NONE, *versions], "model version")
            check(choice, label_values, "label")
            styled, table, said = heat_table(study, chosen, other, choice)
            name = re.sub(r"[^A-Za-z0-9_-]+", "-", f"heatmap-{chosen}-{other}-{choice}")
            path = study.cache / f"{name}.csv"
            table.to_csv(path, index=False)
            query = urlencode({"heat_version": chosen, "heat_compare": other, "label": choice})
            # A cell's drill-down belonged to the map drawn before: cleared, not left beside this one.
            return f'<span hidden data-query="{html.escape(query)}"></span>', styled, str(path), said, "", ""

        heat_inputs = [heat_version, heat_compare, heat_label]
        heat_outputs = [heat_state, heatmap, heat_csv, heat_said, heat_detail, heat_pairs]
        gr.on(
            [heat_version.input, heat_compare.input, heat_label.input],
            heat,
            heat_inputs,
            heat_outputs,
            api_name=False,
            trigger_mode="multiple",
        )
        # The shared view first, then what it shows: nothing drawn for the defaults can land after it.
        # The views follow a visitor's choices (`.input`), not values set here: each is drawn once.
        loaded = demo.load(from_url, None, [*inputs, *heat_inputs, tabs], api_name=False)
        loaded.then(show, inputs, [view_state, *columns, *outputs], api_name=False)
        loaded.then(heat, heat_inputs, heat_outputs, api_name=False)
        loaded.then(None, None, None, js="() => { window.t2iViewShown = true; }")

        def drill(chosen: str, other: str, choice: str, table: pd.DataFrame, event: gr.SelectData) -> tuple[str, str]:
            """A cell's prompt, the share of its map's label in each version shown, and their images."""
            check(chosen, versions, "model version")
            check(other, [NONE, *versions], "model version")
            attribute, label = check(choice, label_values, "label").split("/", 1)
            row, column = event.index
            job = check(str(table.iloc[row, 0]), study.occupations, "occupation")
            names = {LANGUAGES[code]: code for code in codes}
            header = str(table.columns[column])
            code = names.get(header, codes[0])
            pair = [chosen] if other in (NONE, chosen) else [chosen, other]
            said = []
            for name in pair:
                share = interval(*study.share_interval(name, code, job, attribute, label))
                images = study.metrics(name, code, job)["images"]
                said.append(f"`{plain(name)}`: share perceived {plain(label)} ({plain(attribute)}) {share} of "
                            f"{images} images")  # fmt: skip
            detail = f"**{job}** in **{LANGUAGES[code]}**: " + prompt_html(study.prompt(chosen, code, job), code)
            return detail + "\n\n" + "; ".join(said), pairs_html(study, pair, code, job)

        heatmap.select(drill, [heat_version, heat_compare, heat_label, heatmap], [heat_detail, heat_pairs],
                       api_name=False)  # fmt: skip

        if reference:

            def against_reference(code: str) -> tuple[str, str]:
                check(code, codes, "language")
                return reference_figure(study, versions, code)

            reference_language.change(
                against_reference, [reference_language], [reference_plot, reference_fits], api_name=False
            )
            demo.load(against_reference, [reference_language], [reference_plot, reference_fits], api_name=False)
            reference_tab.select(None, None, None, js=TAB_SYNC % "reference")
        for tab, key in ((compare_tab, "compare"), (heat_tab, "heat"), (leaderboard_tab, "leaderboard"),
                         (about_tab, "about")):  # fmt: skip
            tab.select(None, None, None, js=TAB_SYNC % key)

        def api_metrics(chosen: str, code: str, job: str) -> dict:
            check(chosen, versions, "model version")
            check(code, codes, "language")
            check(job, study.occupations, "occupation")
            return study.metrics(chosen, code, job)

        def api_show(chosen: str, other: str, job: str, shown: list[str] | None) -> dict:
            """What the page shows, as data: per language the prompt, image URLs and metrics."""
            check(chosen, versions, "model version")
            check(other, [NONE, *versions], "model version")
            check(job, study.occupations, "occupation")
            shown = check_languages(shown, codes)
            pair = [chosen] if other in (NONE, chosen) else [chosen, other]
            return {
                code: {
                    "prompt": study.prompt(chosen, code, job),
                    "images": {v: [f"gradio_api/file={path}" for path in study.images(v, code, job)] for v in pair},
                    "samples": {
                        v: [
                            {k: s[k] for k in ("sample_index", "seed", "status", *ATTRIBUTES)}
                            for s in study.samples(v, code, job)
                        ]
                        for v in pair
                    },  # fmt: skip
                    "metrics": {v: study.metrics(v, code, job) for v in pair},
                }
                for code in shown
            }

        def api_leaderboard() -> list[dict]:
            return study.leaderboard().to_dict(orient="records")

        def api_heatmap(chosen: str, label: str = "gender/female", versus: str = NONE) -> dict:
            check(chosen, versions, "model version")
            check(label, label_values, "label")
            check(versus, [NONE, *versions], "model version")
            attribute, name = label.split("/", 1)
            table = study.heatmap(chosen, attribute, name, None if versus in (NONE, chosen) else versus)
            return {
                column: {o: (None if pd.isna(v) else float(v)) for o, v in table[column].items()}
                for column in table.columns
            }

        gr.api(api_show, api_name="show")
        gr.api(api_metrics, api_name="metrics")
        gr.api(api_leaderboard, api_name="leaderboard")
        gr.api(api_heatmap, api_name="heatmap")
    return demo


STUDY = load_study_from_env()
gr.set_static_paths(paths=[STUDY.cache])  # images are served as they are, never copied or rewritten
demo = build_demo(STUDY)
LAUNCH = {"css": CSS, "head": HEAD}  # Gradio 6 takes the stylesheet and the head at launch

if __name__ == "__main__":
    demo.launch(**LAUNCH)
