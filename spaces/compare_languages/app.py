"""Compare languages and model versions: images, perceived attributes, bias metrics, CLIP scores.

Run it on the offline study's outputs:  T2I_BIAS_STORE_ROOT=./hub python spaces/compare_languages/app.py
Configure it as a Space with environment variables: T2I_BIAS_STORE (local or hub),
T2I_BIAS_STORE_ROOT, T2I_BIAS_NAMESPACE, T2I_BIAS_SPACE_VERSIONS ("base=ns/images-base-eval,...").
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # study_data.py beside this file, however the app is started

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402
from study_data import ATTRIBUTES, Study, load_study_from_env  # noqa: E402

from pipelines.prompting.grammar import LANGUAGES  # noqa: E402

NONE = "none"


def metrics_markdown(study: Study, versions: list[str], language: str, occupation: str) -> str:
    rows = {version: study.metrics(version, language, occupation) for version in versions}
    labels = {
        "images": "images",
        "rejection_rate": "face rejection rate",
        "gender_l1": "gender L1 from uniform",
        "race_l1": "race L1 from uniform",
        "age_l1": "age L1 from uniform",
        "gender_expected_max_unfairness": "gender exp. max unfairness (all occupations)",
        "clip_own_prompt": "CLIP: own prompt",
        "clip_occupation": "CLIP: English occupation",
        "clip_person": "CLIP: a person",
    }
    lines = ["| | " + " | ".join(versions) + " |", "|---" * (len(versions) + 1) + "|"]
    for key, label in labels.items():
        values = [rows[v][key] for v in versions]
        lines.append(
            f"| {label} | "
            + " | ".join("–" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x) for x in values)
            + " |"
        )
    return "\n".join(lines)


def build_demo(study: Study) -> gr.Blocks:
    versions = list(study.versions)
    default_languages = study.languages[:4]
    with gr.Blocks(title="Multilingual text-to-image bias") as demo:
        gr.Markdown(
            "# Perceived gender, race and age across languages\n"
            "Images generated from the same occupation prompt in every language, seed for seed; their perceived "
            "attributes (a classifier's guess from appearance, not anyone's identity), bias metrics and CLIP scores."
        )
        with gr.Tab("Compare languages"):
            with gr.Row():
                version = gr.Dropdown(versions, value=versions[0], label="Model version", elem_id="version")
                compare = gr.Dropdown([NONE, *versions], value=NONE, label="Compare with", elem_id="compare")
                occupation = gr.Dropdown(
                    study.occupations, value=study.occupations[0], label="Occupation", elem_id="occupation"
                )
            languages = gr.CheckboxGroup(
                [(LANGUAGES[code], code) for code in study.languages],
                value=default_languages,
                label="Languages",
                elem_id="languages",
            )
            columns, outputs = [], []
            with gr.Row():
                for code in study.languages:
                    with gr.Column(visible=code in default_languages, min_width=220) as column:
                        gr.Markdown(f"### {LANGUAGES[code]}")
                        gallery = gr.Gallery(columns=2, height=260, label="images", elem_id=f"gallery-{code}")
                        gallery_b = gr.Gallery(columns=2, height=260, label="compared", visible=False)
                        plots = [
                            gr.BarPlot(
                                x="label",
                                y="share",
                                color="version",
                                y_lim=[0, 1],
                                title=f"perceived {name}",
                                height=220,
                                elem_id=f"plot-{name}-{code}",
                            )
                            for name in ATTRIBUTES
                        ]
                        metrics = gr.Markdown(elem_id=f"metrics-{code}")
                    columns.append(column)
                    outputs += [gallery, gallery_b, *plots, metrics]
        with gr.Tab("Leaderboard"):
            gr.Markdown("Languages × model versions over all occupations. Click a column header to sort.")
            gr.Dataframe(study.leaderboard(), interactive=False, elem_id="leaderboard")

        def show(chosen: str, other: str, job: str, shown: list[str]) -> list:
            # Every value must be one of the loaded choices: nothing a visitor types reaches the store.
            if chosen not in versions or other not in (NONE, *versions) or job not in study.occupations:
                raise gr.Error("unknown model version or occupation")
            if not set(shown) <= set(study.languages):
                raise gr.Error("unknown language")
            pair = [chosen] if other in (NONE, chosen) else [chosen, other]
            updates = [gr.update(visible=code in shown) for code in study.languages]
            for code in study.languages:
                updates.append(study.images(chosen, code, job) if code in shown else [])
                updates.append(
                    gr.update(
                        value=study.images(other, code, job) if len(pair) == 2 and code in shown else [],
                        visible=len(pair) == 2,
                    )
                )
                for name in ATTRIBUTES:
                    frames = [study.distribution(v, code, job, name) for v in pair] if code in shown else []
                    updates.append(pd.concat(frames, ignore_index=True) if frames else None)
                updates.append(metrics_markdown(study, pair, code, job) if code in shown else "")
            return updates

        inputs = [version, compare, occupation, languages]
        for trigger in (version.change, compare.change, occupation.change, languages.change):
            trigger(show, inputs, columns + outputs, api_name=False)
        demo.load(show, inputs, columns + outputs, api_name="show")

        def api_metrics(chosen: str, code: str, job: str) -> dict:
            if chosen not in versions or code not in study.languages or job not in study.occupations:
                raise gr.Error("unknown model version, language or occupation")
            return study.metrics(chosen, code, job)

        def api_leaderboard() -> list[dict]:
            return study.leaderboard().to_dict(orient="records")

        gr.api(api_metrics, api_name="metrics")
        gr.api(api_leaderboard, api_name="leaderboard")
    return demo


demo = build_demo(load_study_from_env())

if __name__ == "__main__":
    demo.launch()
