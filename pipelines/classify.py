"""Stage 6: find faces and classify perceived gender, race and age in every image.

    python -m pipelines.classify --input images --detector mtcnn --classifier fairface \\
        --classifier_model t2i-bias/tiny-fairface

One row per image, in the images dataset's configs: the number of faces, the chosen (largest) face,
its attributes and probabilities, the detector and classifier. Images with no face or several
faces stay in the dataset, marked in `status` (`ok`, `no_face`, `multiple_faces`, `corrupt`): the
reference evaluation keeps only `ok` images, and the rejection rate is a reported figure. A
corrupt image is recorded as such, not a crash. Images are read shard by shard and classified in
batches, the models loaded once.
"""

from __future__ import annotations

import io
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from pipelines.artifacts.cards import dataset_card
from pipelines.artifacts.dataset_files import DatasetWriter, config_entry, select_configs
from pipelines.errors import ConfigError
from pipelines.harness.config import StageArguments, input_field
from pipelines.harness.stage import Published, StageRun, execute, stage_main
from pipelines.modeling.diffusion import pick_device
from pipelines.perception.classifiers import CLASSIFIERS, load_classifier
from pipelines.perception.faces import DETECTORS, face_chip, load_detector

STAGE = "classify"
STATUSES = ("ok", "no_face", "multiple_faces", "corrupt")
# Columns carried over from the images dataset, so the attributes stand on their own.
CARRIED = ("prompt_id", "language", "variant", "profession", "sample_index", "seed", "model", "model_revision")
ATTRIBUTE_FEATURES = datasets.Features(
    {
        **{column: datasets.Value("string") for column in CARRIED},
        "sample_index": datasets.Value("int32"),
        "seed": datasets.Value("int64"),
        "prompt_gender": datasets.Value("string"),
        "status": datasets.Value("string"),
        "num_faces": datasets.Value("int32"),
        "face_box": datasets.List(datasets.Value("float32")),
        "face_score": datasets.Value("float32"),
        "gender": datasets.Value("string"),
        "gender_scores": datasets.List(datasets.Value("float32")),
        "race": datasets.Value("string"),
        "race4": datasets.Value("string"),
        "race_scores": datasets.List(datasets.Value("float32")),
        "age": datasets.Value("string"),
        "age_scores": datasets.List(datasets.Value("float32")),
        "detector": datasets.Value("string"),
        "classifier": datasets.Value("string"),
    }
)


@dataclass
class Arguments(StageArguments):
    INPUTS = {"input": "dataset", "classifier_model": "model"}
    input: str = input_field("Images dataset (ns/name@rev).", default="images")
    output_repo: str | None = field(default=None, metadata={"help": "Attributes repo (default <input>-attributes)."})
    configs: list[str] = field(default_factory=list, metadata={"help": "Images configs to classify (all if empty)."})
    detector: str = field(default="mtcnn", metadata={"help": f"Face detector, one of {tuple(DETECTORS)}."})
    classifier: str = field(default="fairface", metadata={"help": f"Attribute classifier, one of {CLASSIFIERS}."})
    classifier_model: str | None = input_field(
        "FairFace weights (model repo or path) or an open_clip model (folder, repo or name).", default="tiny-fairface"
    )
    clip_pretrained: str | None = field(default=None, metadata={"help": "open_clip pretrained tag (clip)."})
    nonbinary_margin: float | None = field(
        default=None, metadata={"help": "clip: call gender non-binary when the two are within this margin."}
    )
    chip_size: int = field(default=300, metadata={"help": "Aligned face chip size (FairFace: 300)."})
    chip_padding: float = field(default=0.25, metadata={"help": "Chip padding around the face (FairFace: 0.25)."})
    batch_size: int = field(default=32, metadata={"help": "Images per detector and classifier call."})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda."})

    def __post_init__(self) -> None:
        if self.output_repo is None:
            self.output_repo = f"{self.input.partition('@')[0].split('/')[-1]}-attributes"
        super().__post_init__()
        if self.detector not in DETECTORS:
            raise ConfigError(f"detector={self.detector!r}: allowed {', '.join(DETECTORS)}")
        if self.classifier not in CLASSIFIERS:
            raise ConfigError(f"classifier={self.classifier!r}: allowed {', '.join(CLASSIFIERS)}")
        if self.classifier == "deepface":
            self.classifier_model = None
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size}: must be at least 1")


def classify_rows(rows: list[dict[str, Any]], detector: Any, classifier: Any, args: Arguments) -> list[dict[str, Any]]:
    """Attributes rows for a batch of image rows: one detector call, one classifier call."""
    from PIL import Image

    images: list[np.ndarray | None] = []
    for row in rows:
        try:
            images.append(np.asarray(Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB")))
        except Exception:  # noqa: BLE001 - any undecodable image is recorded, not fatal
            images.append(None)
    decoded = [image for image in images if image is not None]
    found = iter(detector.detect(decoded)) if decoded else iter(())
    faces = [next(found) if image is not None else None for image in images]
    chosen = [max(f, key=lambda face: face.area) if f else None for f in faces]
    chips = [
        face_chip(image, face, args.chip_size, args.chip_padding)
        for image, face in zip(images, chosen)
        if face is not None
    ]
    attributes = iter(classifier.classify(chips))
    out = []
    for row, image, image_faces, face in zip(rows, images, faces, chosen):
        status = "corrupt" if image is None else "no_face" if not image_faces else "ok"
        if image_faces and len(image_faces) > 1:
            status = "multiple_faces"
        result = {column: row.get(column) for column in CARRIED}
        result |= {
            "prompt_gender": row.get("gender"),
            "status": status,
            "num_faces": len(image_faces or []),
            "detector": args.detector,
            "classifier": args.classifier,
        }
        if face is not None:
            found_attributes = next(attributes)
            result |= {
                "face_box": list(face.box),
                "face_score": face.score,
                "gender": found_attributes.gender,
                "gender_scores": found_attributes.gender_scores,
                "race": found_attributes.race,
                "race4": found_attributes.race4,
                "race_scores": found_attributes.race_scores,
                "age": found_attributes.age,
                "age_scores": found_attributes.age_scores,
            }
        out.append(result)
    return out


def build(run: StageRun, folder: Path) -> str:
    args: Arguments = run.args
    source = run.input_folder("input")
    configs = select_configs(source, args.configs, run.inputs["input"])
    device = pick_device(args.device)
    detector = load_detector(args.detector, device)
    model = run.model_path("classifier_model") if args.classifier_model else None
    classifier = load_classifier(
        args.classifier, model, device, pretrained=args.clip_pretrained, margin=args.nonbinary_margin
    )
    writer = DatasetWriter(folder, ATTRIBUTE_FEATURES, rows_per_shard=10_000)
    statuses: dict[str, Counter] = {}
    for config in configs:
        shards = sorted((source / "data" / config).glob("*.parquet"))
        total = sum(pq.ParquetFile(shard).metadata.num_rows for shard in shards)
        progress = tqdm(total=total, desc=f"classify {config}", unit="img", file=sys.stderr)
        counts = statuses.setdefault(config, Counter())
        for shard in shards:
            for batch in pq.ParquetFile(shard).iter_batches(batch_size=args.batch_size):
                rows = classify_rows(batch.to_pylist(), detector, classifier, args)
                counts.update(row["status"] for row in rows)
                writer.write(config, rows)
                progress.update(len(rows))
        progress.close()
    rows = writer.close()
    table = ["| config | images | " + " | ".join(STATUSES) + " | rejected |", "|---" * (len(STATUSES) + 3) + "|"]
    for config, counts in statuses.items():
        n = sum(counts.values())
        rejected = (n - counts["ok"]) / n if n else 0.0
        table.append(f"| `{config}` | {n} | " + " | ".join(str(counts[s]) for s in STATUSES) + f" | {rejected:.1%} |")
    dataset_card(
        repo_id=run.output_repo_id,
        title="Perceived attributes",
        description=(
            f"Faces found by `{args.detector}` and perceived gender, race and age classified by `{args.classifier}` "
            f"(`{run.inputs.get('classifier_model', 'built-in')}`) in the images of `{run.inputs['input']}`. "
            "One row per image; only `status == 'ok'` rows (exactly one face) enter the bias metrics, as in the "
            "reference evaluation. Perceived attributes are a classifier's guess from appearance, not anyone's "
            "identity.\n\nFace detection per config:\n\n" + "\n".join(table)
        ),
        lineage=run.lineage,
        configs=[config_entry(config) for config in configs],
        languages=sorted({config.split("_", 1)[0] for config in configs}),
        rows=rows,
        task_categories=["image-classification"],
        tags=["attributes", "faces", args.classifier],
        rejection={config: dict(counts) for config, counts in statuses.items()},
    ).save(folder / "README.md")
    return f"Attributes of {sum(rows.values())} images ({args.detector}, {args.classifier})"


def run(args: Arguments) -> Published:
    return execute(STAGE, args, build)


def main(argv: list[str] | None = None) -> None:
    stage_main(Arguments, STAGE, run, argv)


if __name__ == "__main__":
    main()
