"""The CLIP score's widget: an image and a text in, their score out.

The model is the Space's setting (CLIP_SCORE_MODEL, CLIP_SCORE_PRETRAINED), never a visitor's input.
evaluate's own `launch_gradio_widget` still calls the `gr.inputs` API that Gradio 4 removed, so
this Space builds its small interface itself.
"""

import os
from pathlib import Path

import evaluate
import gradio as gr

module = evaluate.load(str(Path(__file__).parent))
MODEL = os.environ.get("CLIP_SCORE_MODEL", "ViT-L-14-quickgelu")  # OpenAI's ViT-L/14 uses QuickGELU
PRETRAINED = os.environ.get("CLIP_SCORE_PRETRAINED", "openai" if MODEL == "ViT-L-14-quickgelu" else None)


def compute(image: object, text: str, convention: str) -> dict:
    if image is None or not text.strip():
        raise gr.Error("give an image and a text")
    return module.compute(
        predictions=[image], references=[text], model=MODEL, pretrained=PRETRAINED, convention=convention
    )


demo = gr.Interface(
    fn=compute,
    inputs=[
        gr.Image(type="pil", label="image"),
        gr.Textbox("a photo of the face of a nurse", label="text"),
        gr.Radio(["cosine", "torchmetrics"], value="cosine", label="convention"),
    ],
    outputs=gr.JSON(label="CLIP score"),
    title="CLIP score",
    description=f"Model: `{MODEL}` ({PRETRAINED or 'its own weights'}).",
    api_name="compute",
    flagging_mode="never",
)

if __name__ == "__main__":
    demo.launch()
