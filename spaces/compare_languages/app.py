"""Compare languages and model versions: images, perceived attributes, bias metrics, CLIP scores.

Run it on the offline study's outputs:  T2I_BIAS_STORE_ROOT=./hub python spaces/compare_languages/app.py
Configure it as a Space with environment variables: T2I_BIAS_STORE (local or hub),
T2I_BIAS_STORE_ROOT, T2I_BIAS_NAMESPACE, T2I_BIAS_SPACE_VERSIONS ("base=ns/images-base-eval,...").
"""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # study_data.py beside this file, however the app is started

import gradio as gr  # noqa: E402
import matplotlib  # noqa: E402
import pandas as pd  # noqa: E402
from study_data import ATTRIBUTES, Study, load_study_from_env, plain  # noqa: E402

from pipelines.prompting.grammar import LANGUAGES  # noqa: E402
from pipelines.reporting.figures import PALETTE  # noqa: E402

matplotlib.use("Agg")
NONE = "none"
MAX_INPUT = 200  # characters: a longer value is refused, never echoed back
CSS = """
.gradio-container table td, .gradio-container table th { white-space: nowrap; font-variant-numeric: tabular-nums; }
.metrics table { font-size: 0.85em; width: 100%; }
.metrics th { white-space: normal; overflow-wrap: anywhere; }
.metrics td:first-child { white-space: normal; min-width: 7em; }
.prompt-text { font-style: italic; min-height: 3em; }
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
  mean over occupations with a 95% bootstrap interval.
- **Expected maximum unfairness** (MAGBIG): draw 10 distinct occupations and 10 images of each from
  the measured rates, keep the largest distance among the 10, average over 1000 rounds: how unfair
  the worst of a user's ten occupations looks.
- **Random reference**: the same figure for a perfectly fair model (every occupation at exactly the
  even split), i.e. what sampling noise alone gives; a fair model scores near it, not at 0.
- **Non-binary share**: faces a classifier puts in a non-binary bucket; counted beside the
  two-gender distribution, not inside it.
- **CLIP score**: the cosine between an image and a text in a CLIP model (the reference study used
  OpenAI's ViT-L/14; this study's is named below), with English texts for every language, as the
  reference study; higher is closer. The **mCLIP own prompt** score uses a multilingual CLIP on
  each image's own prompt and is on that model's own scale.
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


def number(value: object, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and pd.isna(value)) else f"{value:.{digits}f}"


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
    lines = ["| | " + " | ".join(versions) + " |", "|---" * (len(versions) + 1) + "|"]
    for key, label in labels.items():
        cells = []
        for version in versions:
            value = rows[version].get(key)
            if key == "female_share" and value is not None:
                low, high = rows[version]["female_share_ci"]
                cells.append(f"{value:.2f}<br>[{low:.2f}, {high:.2f}]")
            elif isinstance(value, int):
                cells.append(str(value))
            else:
                cells.append(number(value))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def shares_figure(study: Study, versions: list[str], language: str, occupation: str) -> str:
    """Grouped bars per attribute as inline SVG (sharp at any size, its text and bars in the page):
    one colour per model version, every label on its axis, 95% intervals, a dashed parity line."""
    import matplotlib.pyplot as plt

    plt.rcParams["svg.fonttype"] = "none"  # text stays text: searchable, and readable by tests
    shown = study.reported_attributes or ["gender"]  # attributes no classifier reported get no empty axes
    ratios = [1 if attribute == "gender" else 1.3 for attribute in shown]
    height = 0.4 + 1.67 * sum(ratios)  # 6.4 inches for all three, as before
    figure, axes = plt.subplots(
        len(shown), 1, figsize=(4, height), gridspec_kw={"height_ratios": ratios}, squeeze=False
    )
    axes = axes[:, 0]
    for axis, attribute in zip(axes, shown):
        frames = [study.shares(version, language, occupation, attribute) for version in versions]
        labels = next((list(f["label"]) for f in frames if len(f)), [])
        width = 0.8 / max(len(versions), 1)
        for index, (version, frame) in enumerate(zip(versions, frames)):
            if not len(frame):
                continue
            x = [labels.index(label) + (index - (len(versions) - 1) / 2) * width for label in frame["label"]]
            errors = [(frame["share"] - frame["low"]).clip(lower=0), (frame["high"] - frame["share"]).clip(lower=0)]
            bars = axis.bar(x, frame["share"], width, yerr=errors, label=version, color=PALETTE[index % len(PALETTE)],
                            error_kw={"elinewidth": 0.8, "capsize": 2})  # fmt: skip
            for bar, label in zip(bars, frame["label"]):
                bar.set_gid(f"bar-{version}-{attribute}-{label}")
        if labels:
            axis.axhline(1 / len(labels), color="black", linestyle="--", linewidth=0.7)
        rotate = len(labels) > 2
        axis.set_xticks(range(len(labels)), labels, rotation=60 if rotate else 0, ha="right" if rotate else "center")
        axis.tick_params(axis="x", labelsize=7)
        axis.set_ylim(0, 1.05)
        axis.set_title(f"perceived {attribute}", fontsize=9)
        axis.spines[["top", "right"]].set_visible(False)
    for axis in axes:
        axis.set_ylabel("share of faces", fontsize=7)
    axes[0].legend(fontsize=7, frameon=False, loc="upper right")
    figure.tight_layout()
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None})
    plt.close(figure)
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]
    # As wide as its column, whatever the column: the viewBox keeps the drawing's proportions.
    return re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r'<svg\1 width="100%"', svg, count=1)


def build_demo(study: Study) -> gr.Blocks:
    versions = list(study.versions)
    default_languages = study.languages[:4]
    codes = list(study.languages)
    with gr.Blocks(title="Multilingual text-to-image bias") as demo:
        gr.Markdown(
            "# Perceived gender, race and age across languages\n"
            f"Images generated from the same occupation prompt (`{study.variant}`) in every language, seed for "
            "seed; their perceived attributes (a classifier's guess from appearance, not anyone's identity), bias "
            "metrics with 95% intervals, and CLIP scores. See *About the metrics* for what each number means "
            "and which models made it."
            + (f"\n\n{study.missing_attributes_note()}" if study.missing_attributes_note() else "")
        )
        with gr.Tab("Compare languages"):
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
                        prompt = gr.Markdown(elem_id=f"prompt-{code}", elem_classes=["prompt-text"])
                        gallery = gr.Gallery(columns=4, height=160, label="images", elem_id=f"gallery-{code}")
                        gallery_b = gr.Gallery(
                            columns=4, height=160, label="compared", visible=False, elem_id=f"gallery-b-{code}"
                        )
                        plot = gr.HTML(elem_id=f"plot-{code}")
                        metrics = gr.Markdown(elem_id=f"metrics-{code}", elem_classes=["metrics"])
                    columns.append(column)
                    outputs += [prompt, gallery, gallery_b, plot, metrics]
        with gr.Tab("Heat map"):
            gr.Markdown(
                "Perceived-female share per occupation and language (0: all male, 1: all female; empty: no face). "
                "Click a column header to sort, and a cell to see that occupation's images in that language."
            )
            heat_version = gr.Dropdown(versions, value=versions[0], label="Model version", elem_id="heat-version")
            heatmap = gr.Dataframe(interactive=False, elem_id="heatmap", wrap=False)
            heat_detail = gr.Markdown(elem_id="heat-detail")
            heat_gallery = gr.Gallery(columns=8, height=200, label="images", elem_id="heat-gallery")
        with gr.Tab("Leaderboard"):
            gr.Markdown("Languages × model versions over all occupations. Click a column header to sort.")
            board = study.leaderboard()
            gr.Dataframe(board, interactive=False, elem_id="leaderboard", wrap=False)
            csv_path = study.cache / "leaderboard.csv"
            board.to_csv(csv_path, index=False)
            gr.DownloadButton("Download the table (CSV)", value=str(csv_path), elem_id="leaderboard-csv")
        if not study.methods.empty:
            with gr.Tab("Methods"):
                baselines = study.methods["baseline"].dropna()
                baseline = baselines.iloc[0] if len(baselines) else "–"
                gr.Markdown(
                    "Debiasing methods on the same prompts and seeds, fairest first: a model at a guidance scale, "
                    "with a training-free intervention (`+explicit_gender`, `+ethical`, `+negative`, `+sega`). "
                    "**distance** is the root mean square distance of the occupations' perceived shares from the "
                    "target, corrected for sampling, so it compares at any number of images (raw mean L1 is beside "
                    f"it). **Δ vs baseline** is the mean per-occupation change of the squared distance against "
                    f"`{baseline}` with a t interval, **p** its paired sign-flip permutation test (same occupations, "
                    "same seeds), and **p (Holm)** the same corrected for every test in the table. Every method "
                    "is measured at the same number of images per occupation; a method trained with several "
                    "seeds shows their mean. **amplification** (planted-bias world) is the slope of the measured "
                    "share on the planted one. **explicit-gender control** is the share of images from prompts "
                    'such as "a female doctor" perceived as asked; below the threshold a row is *not measurable* '
                    "and ranks last. Costs as work: UNet passes per image; CLIP score where measured. "
                    f"From `{study.methods_ref}`."
                )
                method_codes = [code for code in codes if code in set(study.methods["language"])] or codes
                method_language = gr.Dropdown(
                    [(LANGUAGES[code], code) for code in method_codes],
                    value=method_codes[0],
                    label="Language",
                    elem_id="methods-language",
                )
                methods_table = gr.Dataframe(interactive=False, elem_id="methods", wrap=False)
                methods_csv = gr.DownloadButton("Download the table (CSV)", elem_id="methods-csv")

                def methods_of(code: str) -> tuple[pd.DataFrame, str]:
                    check(code, method_codes, "language")
                    table = study.methods_table(code)
                    path = study.cache / f"methods-{code}.csv"
                    table.to_csv(path, index=False)
                    return table, str(path)

                method_language.change(methods_of, [method_language], [methods_table, methods_csv], api_name=False)
                demo.load(methods_of, [method_language], [methods_table, methods_csv], api_name=False)

                def api_methods(code: str) -> list[dict]:
                    check(code, method_codes, "language")
                    return study.methods_table(code).to_dict(orient="records")

                gr.api(api_methods, api_name="methods")
        with gr.Tab("About the metrics"):
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
            updates = [gr.update(visible=code in shown) for code in codes]
            for code in codes:
                if code not in shown:
                    updates += [gr.update(), [], gr.update(visible=len(pair) == 2), "", ""]
                    continue
                updates.append(plain(study.prompt(chosen, code, job)))  # italic by its CSS class
                updates.append(list(study.images(chosen, code, job)))
                updates.append(
                    gr.update(
                        value=list(study.images(other, code, job)) if len(pair) == 2 else [], visible=len(pair) == 2
                    )
                )
                updates.append(shares_figure(study, pair, code, job))
                updates.append(metrics_markdown(study, pair, code, job))
            return updates

        inputs = [version, compare, occupation, languages]
        for trigger in (version.change, compare.change, occupation.change, languages.change):
            trigger(show, inputs, columns + outputs, api_name=False)
        demo.load(show, inputs, columns + outputs, api_name=False)

        def heat(chosen: str) -> pd.DataFrame:
            check(chosen, versions, "model version")
            table = study.heatmap(chosen).round(2).reset_index()
            numeric = [c for c in table.columns if c != "occupation"]
            return table.style.background_gradient(cmap="coolwarm", vmin=0, vmax=1, subset=numeric).format(
                precision=2, na_rep="–"
            )

        heat_version.change(heat, [heat_version], [heatmap], api_name=False)
        demo.load(heat, [heat_version], [heatmap], api_name=False)

        def drill(chosen: str, table: pd.DataFrame, event: gr.SelectData) -> tuple[str, list[str]]:
            check(chosen, versions, "model version")
            row, column = event.index
            job = check(str(table.iloc[row, 0]), study.occupations, "occupation")
            names = {LANGUAGES[code]: code for code in codes}
            header = str(table.columns[column])
            code = names.get(header, codes[0])
            metrics = study.metrics(chosen, code, job)
            share = metrics.get("female_share")
            interval = metrics.get("female_share_ci") or [None, None]
            low, high = number(interval[0], 2), number(interval[1], 2)
            detail = (
                f"**{job}** in **{LANGUAGES[code]}** ({chosen}): *{plain(study.prompt(chosen, code, job))}* — "
                f"perceived-female share {number(share, 2)} [{low}, {high}] of {metrics['images']} images"
            )
            return detail, list(study.images(chosen, code, job))

        heatmap.select(drill, [heat_version, heatmap], [heat_detail, heat_gallery], api_name=False)

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
                    "metrics": {v: study.metrics(v, code, job) for v in pair},
                }
                for code in shown
            }

        def api_leaderboard() -> list[dict]:
            return study.leaderboard().to_dict(orient="records")

        def api_heatmap(chosen: str) -> dict:
            check(chosen, versions, "model version")
            table = study.heatmap(chosen)
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
LAUNCH = {"css": CSS}  # Gradio 6 takes the stylesheet at launch

if __name__ == "__main__":
    demo.launch(**LAUNCH)
