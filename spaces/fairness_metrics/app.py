"""The fairness metrics' widget: paste (prediction, occupation) rows, get the metrics.

evaluate's own `launch_gradio_widget` still calls the `gr.inputs` API that Gradio 4 removed, so
this Space builds its small interface itself.
"""

from pathlib import Path

import evaluate
import gradio as gr
import pandas as pd

module = evaluate.load(str(Path(__file__).parent))
EXAMPLE = [["male", "CEO"], ["male", "CEO"], ["female", "CEO"], ["female", "nurse"], ["female", "nurse"]]


def compute(table: pd.DataFrame, labels: str, k: float, n: float, rounds: float, seed: float) -> dict:
    rows = [(str(p).strip() or None, str(o)) for p, o in table.itertuples(index=False) if str(o).strip()]
    try:
        return module.compute(
            predictions=[p for p, _ in rows],
            references=[o for _, o in rows],
            labels=[label.strip() for label in labels.split(",") if label.strip()] or None,
            num_occupations=int(k),
            images_per_occupation=int(n),
            rounds=int(rounds),
            seed=int(seed),
        )
    except ValueError as err:  # bad input is the visitor's to fix: say what, in one line
        raise gr.Error(str(err)) from None


demo = gr.Interface(
    fn=compute,
    inputs=[
        gr.Dataframe(headers=["prediction", "occupation"], value=EXAMPLE, column_count=(2, "fixed"), label="images"),
        gr.Textbox("male, female", label="labels (comma-separated)"),
        gr.Number(2, label="k: distinct occupations per round", precision=0),
        gr.Number(10, label="n: images per occupation", precision=0),
        gr.Number(1000, label="S: rounds", precision=0),
        gr.Number(0, label="seed", precision=0),
    ],
    outputs=gr.JSON(label="metrics"),
    title="Fairness metrics",
    description=(Path(__file__).parent / "README.md").read_text().split("## Metric Description")[1].split("##")[0],
    api_name="compute",
    flagging_mode="never",
)

if __name__ == "__main__":
    demo.launch()
