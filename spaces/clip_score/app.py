"""The evaluate widget for the CLIP score (a Gradio app, as every evaluate Space has)."""

from pathlib import Path

import evaluate
from evaluate.utils import launch_gradio_widget

module = evaluate.load(str(Path(__file__).parent))

if __name__ == "__main__":
    launch_gradio_widget(module)
