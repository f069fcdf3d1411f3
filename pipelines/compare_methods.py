"""Debiasing methods side by side: bias, alignment, speed and explicit-gender control in one table.

    python -m pipelines.compare_methods \\
        --methods "base=images-base,base-g3=images-base-g3,finetuned=images-ft-s0|images-ft-s1" --baseline base

A method is what made a set of images: a model at one guidance scale (an images dataset, named by a
label), with one of the training-free interventions (`none`, `explicit_gender`, `ethical`,
`negative`, `sega`; each a config of the images dataset, see `pipelines/prompting/interventions.py`).
Everything else is found by lineage from each images dataset: its attributes (classify), bias
results (evaluate_bias) and CLIP scores (evaluate_alignment). A method trained with several seeds
gives one images dataset per seed, `label=images-s0|images-s1|images-s2`.

A matched design: every method is measured on the same prompts, the same image seeds and the same
number of images per cell (`--images_per_cell`; default the most that every method has): images
with sample index below n, so image i of one method and image i of another come from the same
noise. For every method, language and prompt variant the table gives:

- the bias: the distance from the target (per occupation an unbiased squared L2 distance, root mean
  square over occupations, with its interval; the target the bias results used), raw mean L1 beside
  its sampling floor, and MAGBIG's expected maximum unfairness beside its random reference; with
  seeds, the mean over seeds, the seeds' range, and an interval over seeds;
- the amplification, when the images come from the planted-bias world: the slope of the measured
  share on the planted one (1: no amplification);
- a paired test against the baseline on the same occupations and seeds, and, pooled over languages
  and occupations, every pair of methods on the same prompts; Holm-adjusted over the whole table;
  with seeds, how many seeds alone are fairer than the baseline;
- explicit-gender control, the share of explicitly gendered prompts' images (`eval_female`,
  `eval_male`, or the grid's gendered prompts) perceived as asked. On the baseline's own model it
  says whether a template has a known answer: a row of that model whose control is below
  `--min_control` is *not measurable* (the model does not obey gender words on that template, so what
  an intervention does there says little), and is left out of the tests. For a model trained for a
  method, lost control is a cost of the method, shown beside its bias;
- fidelity: the share of valid images (one classified face or figure) and the similarity of each
  image to the baseline's image from the same prompt and seed (Shen et al.'s semantic preservation):
  1 - mean absolute pixel difference at up to 64 px, or, with `--similarity_model` (an open_clip
  model, e.g. ViT-L-14-quickgelu for real models), the cosine of its image features;
- for a model trained for the method on some occupations or languages only: in-sample and held-out
  rows apart (`label [in-sample]`, `label [held-out]`), as Shen et al. (ICLR 2024) report them;
- what it costs, as work rather than time taken under whatever load: UNet evaluations per image
  (denoising steps x the batch classifier-free guidance or SEGA runs) and images seen in training
  for a model trained for the method (for distributional alignment, the images it generated and
  classified while training, each denoised three times: its own, the frozen model's, with
  gradients); and the CLIP score (English CLIP, the occupation text) when measured.

Publishes a results dataset (config `methods`) with figures: bias per method and language (the
base-vs-fine-tuned figure when the methods are models), bias against guidance scale, and control.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.artifacts import schemas
from pipelines.artifacts.cards import dataset_card
from pipelines.artifacts.dataset_files import DatasetWriter, decode_image
from pipelines.artifacts.reader import DatasetArtifact
from pipelines.artifacts.store import card_metadata
from pipelines.errors import ConfigError, DataError, UserError
from pipelines.harness.config import StageArguments, input_field
from pipelines.harness.lineage import parse_versions, planted_shares, version_refs
from pipelines.harness.stage import Stage, StageRun
from pipelines.modeling.clip import REFERENCE_CLIP, check_activation
from pipelines.prompting.grammar import describe_neutral_forms
from pipelines.reporting.statistics import holm, mean_interval, paired_test, wilson_interval
from pipelines.resources import space_folder

# Explicitly gendered prompts, and the gender they ask for (None: each row's own, the grid's gendered prompts).
CONTROL_VARIANTS = {"eval_female": "female", "eval_male": "male", "gendered": None}
ALIGNMENT_SCORE = "clip_en_occupation"
METRIC_PATH = space_folder("fairness_metrics")


@dataclass
class Arguments(StageArguments):
    INPUTS = {"similarity_model": "model"}
    output_repo: str = field(default="methods", metadata={"help": "Results dataset repo to publish."})
    methods: str = field(
        default="base=images-base-eval",
        metadata={"help": "label=ns/images[@rev],...: the images of each model and guidance scale."},
    )
    baseline: str | None = field(
        default=None,
        metadata={"help": "The method the others are tested against: a label, or label+intervention (default: "
                  "the first label, no intervention)."},
    )  # fmt: skip
    attribute: str = field(default="gender", metadata={"help": "The perceived attribute compared."})
    rounds: int = field(default=10_000, metadata={"help": "Bootstrap (and Monte Carlo permutation) rounds."})
    seed: int = field(default=0, metadata={"help": "Seed of the bootstrap."})
    confidence: float = field(default=0.95, metadata={"help": "Interval level."})
    images_per_cell: int | None = field(
        default=None,
        metadata={"help": "n: images per (prompt, occupation) cell, the first n seeds of every method (default: "
                  "the most that every method has)."},
    )  # fmt: skip
    min_control: float = field(
        default=0.9,
        metadata={"help": "Explicit-gender control below which a row is not measurable."},
    )
    similarity_model: str | None = input_field(
        "Image features for fidelity: an open_clip model (a name, an hf-hub: name, a folder or a store repo; "
        f"e.g. {REFERENCE_CLIP[0]} with pretrained {REFERENCE_CLIP[1]}) whose cosine similarity between an "
        "image and the baseline's from the same noise is reported; default: pixels (1 - mean absolute difference).",
        default=None,
    )
    similarity_pretrained: str | None = field(default=None, metadata={"help": "Its open_clip pretrained tag."})
    batch_size: int = field(default=64, metadata={"help": "Images per forward pass of the similarity model."})

    def __post_init__(self) -> None:
        super().__post_init__()
        labels = parse_versions(self.methods, "methods")
        self.check_at_least(1, "rounds")
        self.check_at_most(1_000_000, "rounds", why="drawn at once")
        if self.images_per_cell is not None:
            self.check_at_least(2, "images_per_cell")
        if not 0 <= self.min_control <= 1:
            raise ConfigError(f"min_control={self.min_control}: a share between 0 and 1")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"confidence={self.confidence}: between 0 and 1")
        if self.baseline is not None and self.baseline.partition("+")[0] not in labels:
            raise ConfigError(f"baseline={self.baseline!r}: not one of the methods' labels ({', '.join(labels)})")
        self.check_at_least(1, "batch_size")
        self.check_at_most(4_096, "batch_size", why="images per forward pass")
        if self.similarity_model is None:
            self.similarity_pretrained = None
        else:
            check_activation(self.similarity_model, self.similarity_pretrained)


class CompareMethods(Stage):
    name = "compare_methods"
    Arguments = Arguments
    not_parameters = ("batch_size",)
    uses_torch = True  # its similarity model

    def pinned_inputs(self, args: Arguments, store: Any) -> dict[str, str]:
        pinned = {}
        for label, spec in parse_versions(args.methods, "methods").items():
            for name, one in seed_specs(label, spec).items():
                for kind, ref in version_refs(store, args.namespace, label, one).items():
                    pinned[f"{name}.{kind}"] = ref
        return pinned

    def estimate(self, args: Arguments, estimates: Any, costs: Any) -> Any:
        from pipelines.harness.estimate import Estimate

        labels = parse_versions(args.methods, "methods")
        estimates.put(args.repo_id(args.output_repo), kind="methods")
        return Estimate(reads=list(labels.values()), makes=f"a comparison of {len(labels)} method(s) (CPU, seconds)")

    def build(self, run: StageRun, folder: Path) -> str:
        import evaluate

        args: Arguments = run.args
        # Each label's images datasets, one per training seed: `label`, or `label#0`, `label#1`, ...
        seeds = {
            label: list(seed_specs(label, spec)) for label, spec in parse_versions(args.methods, "methods").items()
        }
        labels = list(seeds)
        loaded = {name: self.load(run, name, args) for names in seeds.values() for name in names}
        n = self.images_per_cell(loaded, args)
        metric = evaluate.load(str(METRIC_PATH), "counts")
        planted = self.planted(run, list(loaded))
        baseline = args.baseline or labels[0]
        base_label = baseline.partition("+")[0]
        base_model = loaded[seeds[base_label][0]]["model"]
        measured = {
            label: self.measure(label, [loaded[name] for name in seeds[label]], n, metric, planted, base_model, args)
            for label in labels
        }
        rows = [row for label in labels for row in measured[label]["rows"]]
        if not rows:
            raise DataError(f"methods: no {args.attribute!r} results in the bias datasets of {', '.join(labels)}")
        cells = {name: found for label in labels for name, found in measured[label]["cells"].items()}
        self.same_noise_similarity(run, rows, cells, seeds, baseline, n)
        seed_cells = {name: found for label in labels for name, found in measured[label]["seed_cells"].items()}
        for row in rows:
            place = (row["language"], row["variant"])
            reference = cells.get(baseline, {}).get(place, {})
            reference_name = baseline
            if not reference and row["intervention"] != "none":
                # The baseline has no images of these prompts: an intervention is then tested against
                # its own model's unchanged prompts, on the same seeds.
                reference = cells.get(row["label"], {}).get(place, {})
                reference_name = f"{row['label']}+none"
            own = cells[row["method"]].get(place, {})
            is_baseline = row["method"] == baseline
            test = self.test(reference, own, args) if reference and row["measurable"] and not is_baseline else None
            row |= {
                "baseline": reference_name if reference else None,
                **{f"difference_{k}": test and test[k] for k in ("mean", "ci_low", "ci_high")},
                "p_value": test and test["p_value"],
            }
        comparisons = self.comparisons(rows, cells, seed_cells, baseline, args)
        # One family: every test the table reports, corrected together.
        tested = [r for r in [*rows, *comparisons] if r["p_value"] is not None]
        for row, adjusted in zip(tested, holm([r["p_value"] for r in tested])):
            row["p_holm"] = adjusted
        for row in [*rows, *comparisons]:
            row.setdefault("p_holm", None)
        for config, features, table in [
            ("methods", schemas.METHODS, rows),
            ("comparisons", schemas.METHOD_COMPARISONS, comparisons),
        ]:
            writer = DatasetWriter(folder, features)
            writer.write(config, table)
            writer.close()
        print(self.report(rows, comparisons, baseline, n), flush=True)
        figures = self.figures(folder, rows, args)
        taught = {
            label: loaded[seeds[label][0]]["caption_forms"]
            for label in labels
            if loaded[seeds[label][0]]["caption_forms"] and loaded[seeds[label][0]]["model"] != base_model
        }
        self.card(run, folder, rows, comparisons, figures, baseline, n, taught)
        return f"{len({r['method'] for r in rows})} methods compared on {args.attribute} at {n} images per cell"

    @staticmethod
    def test(reference: dict[Any, float], own: dict[Any, float], args: Arguments) -> dict[str, float] | None:
        """The paired test of `own - reference` on the cells both have; None when they share none."""
        shared = sorted(set(reference) & set(own))
        if not shared:
            return None
        test = paired_test([reference[c] for c in shared], [own[c] for c in shared], rounds=args.rounds,
                           seed=args.seed, confidence=args.confidence)  # fmt: skip
        return {"mean": test["mean_difference"], "ci_low": test["ci_low"], "ci_high": test["ci_high"],
                "p_value": test["p_value"], "cells": len(shared)}  # fmt: skip

    def comparisons(
        self, rows: list[dict], cells: dict, seed_cells: dict, baseline: str, args: Arguments
    ) -> list[dict[str, Any]]:
        """Every pair of measurable methods on the same prompts, pooled over the (language, occupation)
        cells both have: the baseline against each, and the others against one another. With seeds,
        how many of a method's seeds alone are fairer than the other method (p < 0.05, one test each)."""
        out = []
        methods = list(dict.fromkeys((r["method"], r["variant"]) for r in rows))
        methods.sort(key=lambda m: m[0] != baseline)  # the baseline first: it is the `versus` of its pairs
        unmeasurable = {(r["method"], r["variant"], r["language"]) for r in rows if not r["measurable"]}

        def pooled(values: dict, name: str, variant: str) -> dict:
            return {(language, occupation): value
                    for (language, kind), by_occupation in values.items()
                    if kind == variant and (name, variant, language) not in unmeasurable
                    for occupation, value in by_occupation.items()}  # fmt: skip

        for variant in sorted({m[1] for m in methods}):
            chosen = [name for name, kind in methods if kind == variant]
            mean = {name: pooled(cells[name], name, variant) for name in chosen}
            per_seed = {name: [pooled(c, name, variant) for c in seed_cells[name]] for name in chosen}
            for index, versus in enumerate(chosen):
                for method in chosen[index + 1 :]:
                    test = self.test(mean[versus], mean[method], args)
                    if test is None:
                        continue
                    alone = [self.test(mean[versus], seed, args) for seed in per_seed[method]]
                    out.append({"variant": variant, "method": method, "versus": versus,
                                "attribute": args.attribute, "cells": test.pop("cells"),
                                **{f"difference_{k}": test[k] for k in ("mean", "ci_low", "ci_high")},
                                "p_value": test["p_value"], "seeds": len(alone),
                                "seeds_better": sum(t is not None and t["mean"] < 0 and t["p_value"] < 0.05
                                                    for t in alone)})  # fmt: skip
        return out

    def load(self, run: StageRun, name: str, args: Arguments) -> dict[str, Any]:
        """One images dataset's model, settings and perceived labels: `{key: {occupation: {sample
        index: label}}}` per (intervention, language, variant), with the bias results' labels and
        targets, so that every method is measured the same way on the same images."""
        images = run.dataset(f"{name}.images").expect("images", name)
        bias = run.dataset(f"{name}.bias").expect("bias", name)
        attributes = run.dataset(f"{name}.attributes")
        parameters = images.lineage.get("parameters", {})
        labels, size = None, {}
        for summary in bias.rows("summary"):
            if summary["attribute"] == args.attribute:
                labels = list(summary["labels"])
                size = {"k": summary["k"], "n": summary["n"]}
        if labels is None:
            raise DataError(f"methods: no {args.attribute!r} results in {run.inputs[f'{name}.bias']}")
        targets = {
            (row["intervention"] or "none", row["language"], row["variant"], row["occupation"]): row["target"]
            for row in bias.rows("per_occupation")
            if row["attribute"] == args.attribute
        }
        perceived: dict[tuple, dict[str, dict[int, str | None]]] = defaultdict(lambda: defaultdict(dict))
        control: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        columns = ["profession", "sample_index", "status", "intervention", "prompt_gender", args.attribute]
        for config in attributes.configs:
            info = attributes.config_info(config)
            language, variant = info.get("language"), info.get("variant")
            for row in attributes.rows(config, columns):
                intervention = row["intervention"] or "none"
                label = row[args.attribute] if row["status"] == "ok" else None
                if variant in CONTROL_VARIANTS:
                    asked = CONTROL_VARIANTS[variant] or row["prompt_gender"]
                    if intervention == "none" and asked and label is not None and args.attribute == "gender":
                        control[language][0] += label == asked
                        control[language][1] += 1
                    continue
                perceived[(intervention, language, variant)][row["profession"]][row["sample_index"]] = label
        return {
            "name": name,
            "model": images.lineage.get("inputs", {}).get("model", ""),
            "guidance": float(parameters.get("guidance_scale", math.nan)),
            "steps": parameters.get("num_inference_steps"),
            "labels": labels,
            "size": size,
            "targets": targets,
            "perceived": perceived,
            "control": control,
            "alignment": self.alignment(run, name),
            **model_training(run, images.lineage.get("inputs", {}).get("model", "")),
        }

    @staticmethod
    def images_per_cell(loaded: dict[str, dict], args: Arguments) -> int:
        """n: the images per cell every method is measured on (the first n sample indices)."""
        have = {
            name: min(len(indices) for cells in found["perceived"].values() for indices in cells.values())
            for name, found in loaded.items()
            if found["perceived"]
        }
        if not have:
            raise DataError("methods: no images of prompts without an explicit gender to compare")
        fewest = min(have, key=have.get)
        if args.images_per_cell is None:
            return have[fewest]
        if args.images_per_cell > have[fewest]:
            raise ConfigError(f"images_per_cell={args.images_per_cell}: {fewest} has {have[fewest]} images in "
                              "some cell; every method must have n")  # fmt: skip
        return args.images_per_cell

    @staticmethod
    def planted(run: StageRun, names: list[str]) -> dict[tuple[str, str], float] | None:
        """The planted shares when every method's images come from the planted-bias world, else None."""
        try:
            tables = [planted_shares(run.store, run.inputs[f"{n}.images"], n, "") for n in names]
        except DataError:
            return None
        return tables[0] if all(t == tables[0] for t in tables) else None

    def measure(
        self,
        label: str,
        seeds: list[dict[str, Any]],
        n: int,
        metric: Any,
        planted: dict | None,
        base_model: str,
        args: Arguments,
    ) -> dict[str, Any]:
        """One label's rows (per intervention, language, variant and, for a model trained for the
        method on some cells only, in-sample and held-out occupations) on the first n images of every
        cell; per method name, its cells' squared distances averaged over seeds and per seed."""
        first = seeds[0]
        trained = first["training_cells"] if first["model"] != base_model else None
        held_out = trained is not None and any(
            (key[1], occupation) not in trained for key, cells in first["perceived"].items() for occupation in cells
        )
        rows, cells, seed_cells = [], defaultdict(dict), defaultdict(lambda: [{} for _ in seeds])
        for key in sorted(first["perceived"]):
            intervention, language, variant = key
            occupations = sorted(first["perceived"][key])
            groups = {"all": occupations} if trained is None else {
                "in-sample": [o for o in occupations if (language, o) in trained],
                "held-out": [o for o in occupations if (language, o) not in trained],
            }  # fmt: skip
            for split, chosen in groups.items():
                if not chosen:
                    continue
                name = label if intervention == "none" else f"{label}+{intervention}"
                name += f" [{split}]" if held_out else ""
                results, pooled, per_seed = self.seed_results(seeds, key, chosen, n, metric, args)
                for index, found in per_seed.items():
                    seed_cells[name][index][(language, variant)] = found
                if not results:
                    continue
                shared = set.intersection(*(set(c) for c in per_seed.values()))
                cells[name][(language, variant)] = {
                    o: _mean([c[o] for c in per_seed.values()]) for o in sorted(shared)
                }
                fit = self.amplification(metric, pooled, chosen, first["labels"], planted, language, args)
                control = self.control_share(seeds, language, args.confidence)
                row = self.row(label, first, key, n, results, fit, control, base_model, args)
                valid = _mean([sum(v["n"] for v in r["per_occupation"].values()) / (n * len(chosen)) for r in results])
                rows.append(row | {"method": name, "split": split, "valid_share": valid})
        return {"rows": rows, "cells": dict(cells), "seed_cells": dict(seed_cells)}

    def same_noise_similarity(
        self, run: StageRun, rows: list[dict], cells: dict, seeds: dict[str, list[str]], baseline: str, n: int
    ) -> None:
        """Fidelity to the baseline: per row, the mean similarity of each image to the baseline's
        image of the same prompt and seed (the same starting noise), Shen et al.'s semantic
        preservation: in pixels (1 - mean absolute difference at up to 64 px), or the cosine of the
        `--similarity_model`'s image features. An intervention without baseline images of its
        prompts is compared with its own model's unchanged prompt."""
        base_label, _, base_intervention = baseline.partition("+")
        encoder = self.similarity_encoder(run)
        features = {name: self.features(run, name, n, encoder) for names in seeds.values() for name in names}
        reference = features[seeds[base_label][0]]
        for row in rows:
            row["same_noise_similarity"] = None
            occupations = cells[row["method"]].get((row["language"], row["variant"]), {})
            place = (row["language"], row["variant"])
            if row["method"] == baseline or not occupations:
                continue
            against, wanted = reference, base_intervention or "none"
            if not any((wanted, *place, o, 0) in against for o in occupations):
                against, wanted = features[seeds[row["label"]][0]], "none"
                if row["intervention"] == "none":
                    continue  # nothing of these prompts to compare with
            scores = [
                similarity(images[key], against[(wanted, *place, o, i)], encoder is not None)
                for name in seeds[row["label"]]
                for images in [features[name]]
                for o in occupations
                for i in range(n)
                for key in [(row["intervention"], *place, o, i)]
                if key in images and (wanted, *place, o, i) in against
            ]
            row["same_noise_similarity"] = _mean(scores) if scores else None

    @staticmethod
    def similarity_encoder(run: StageRun) -> tuple[Any, Any] | None:
        """(model, preprocess) of `--similarity_model`, or None for pixels."""
        if run.args.similarity_model is None:
            return None
        from pipelines.modeling.clip import load_open_clip

        model = run.model("similarity_model")
        clip, preprocess, _ = load_open_clip(str(model.path or model.given), run.args.similarity_pretrained)
        return clip, preprocess

    @staticmethod
    def features(run: StageRun, name: str, n: int, encoder: tuple[Any, Any] | None) -> dict[tuple, np.ndarray]:
        """The first n images of every prompt (but the control prompts), by (intervention, language,
        variant, profession, sample index): as floats in [0, 1] at up to 64 px, or, with an encoder,
        as its unit-length image features."""
        import torch
        from PIL import Image

        images = run.dataset(f"{name}.images")
        out: dict[tuple, np.ndarray] = {}
        pending: list[tuple[tuple, Any]] = []

        def encode() -> None:
            clip, preprocess = encoder
            with torch.inference_mode():
                batch = torch.stack([preprocess(Image.fromarray(pixels)) for _, pixels in pending])
                found = torch.nn.functional.normalize(clip.encode_image(batch).float(), dim=-1).numpy()
            out.update((key, vector) for (key, _), vector in zip(pending, found))
            pending.clear()

        columns = ["image", "intervention", "language", "variant", "profession", "sample_index"]
        for config in images.configs:
            if images.config_info(config).get("variant") in CONTROL_VARIANTS:
                continue
            for batch in images.batches(config, columns, batch_size=256):
                for row in batch:
                    if row["sample_index"] >= n or (pixels := decode_image(row["image"])) is None:
                        continue
                    key = (row["intervention"] or "none", row["language"], row["variant"], row["profession"])
                    key = (*key, row["sample_index"])
                    if encoder is not None:
                        pending.append((key, pixels))
                        if len(pending) >= run.args.batch_size:
                            encode()
                        continue
                    if max(pixels.shape[:2]) > 64:
                        pixels = np.asarray(Image.fromarray(pixels).resize((64, 64), Image.Resampling.BILINEAR))
                    out[key] = pixels.astype(np.float32) / 255
        if pending:
            encode()
        return out

    @staticmethod
    def seed_results(
        seeds: list[dict], key: tuple, chosen: list[str], n: int, metric: Any, args: Arguments
    ) -> tuple[list[dict], list[list[int]] | None, dict[int, dict[str, float]]]:
        """Each seed's metrics on the first n images of the `chosen` occupations of `key`; the counts
        pooled over seeds; and per seed, each occupation's unbiased squared distance."""
        results, pooled, per_seed = [], None, {}
        for index, found in enumerate(seeds):
            by_occupation = found["perceived"].get(key, {})
            counts = [[sum(by_occupation.get(o, {}).get(i) == label for i in range(n)) for label in found["labels"]]
                      for o in chosen]  # fmt: skip
            usable = [o for o, c in zip(chosen, counts) if sum(c) > 0]
            if not usable:
                continue
            pooled = counts if pooled is None else [[a + b for a, b in zip(x, y)] for x, y in zip(pooled, counts)]
            uniform = [1 / len(found["labels"])] * len(found["labels"])
            result = metric.compute(
                predictions=counts, references=chosen, labels=found["labels"],
                num_occupations=min(found["size"].get("k") or len(usable), len(usable)),
                images_per_occupation=found["size"].get("n") or 10, rounds=args.rounds, seed=args.seed,
                confidence=args.confidence, target={o: found["targets"].get((*key, o)) or uniform for o in chosen},
            )  # fmt: skip
            results.append(result)
            per_seed[index] = {o: v["distance_sq"] for o, v in result["per_occupation"].items()
                               if v["distance_sq"] == v["distance_sq"]}  # fmt: skip
        return results, pooled, per_seed

    def row(
        self,
        label: str,
        first: dict,
        key: tuple,
        n: int,
        results: list[dict],
        fit: dict,
        control: dict,
        base_model: str,
        args: Arguments,
    ) -> dict[str, Any]:
        intervention, language, variant = key
        squared = [r["distance_sq"] for r in results]
        if len(results) == 1:
            (one,) = results
            low, high = one["distance_ci"]
            l1_low, l1_high = one["mean_l1_ci"]
        else:  # over seeds: training randomness and sampling together
            low, high = (math.sqrt(max(v, 0.0)) for v in mean_interval(squared, args.confidence))
            l1_low, l1_high = mean_interval([r["mean_l1"] for r in results], args.confidence)
        # Whether the template carries a known answer is a property of the prompts on the untouched
        # model: its control gates the rows of the baseline's own model. A model trained for the
        # method may lose control; that is a cost of the method, shown beside its bias, not a gate.
        gated = first["model"] == base_model and control["share"] is not None
        measurable = not gated or control["share"] >= args.min_control
        return {
            "method": label if intervention == "none" else f"{label}+{intervention}",
            "label": label,
            "intervention": intervention,
            "model": first["model"],
            "language": language,
            "variant": variant,
            "attribute": args.attribute,
            "guidance_scale": first["guidance"],
            "num_occupations": len(results[0]["occupations"]),
            "images_per_occupation": float(n),
            "seeds": len(results),
            "mean_l1": _mean([r["mean_l1"] for r in results]),
            "mean_l1_ci_low": l1_low,
            "mean_l1_ci_high": l1_high,
            "exp_max_l1": _mean([r["exp_max_l1"] for r in results]),
            "random_exp_max_l1": _mean([r["random_exp_max_l1"] for r in results]),
            "l1_floor": _mean([r["mean_l1_floor"] for r in results]),
            "distance": math.sqrt(max(_mean(squared), 0.0)),
            "distance_ci_low": low,
            "distance_ci_high": high,
            "seed_distance_low": min(r["distance"] for r in results),
            "seed_distance_high": max(r["distance"] for r in results),
            "amplification": fit.get("slope"),
            "amplification_ci_low": fit.get("slope_ci", [None, None])[0],
            "amplification_ci_high": fit.get("slope_ci", [None, None])[1],
            "measurable": measurable,
            "clip_score": first["alignment"].get(key),
            "unet_passes_per_image": unet_passes(first["steps"], first["guidance"], intervention),
            "training_images": training_images(first, base_model),
            "explicit_gender_control": control["share"],
            "explicit_gender_control_ci_low": control["low"],
            "explicit_gender_control_ci_high": control["high"],
            "explicit_gender_images": control["n"],
        }

    @staticmethod
    def amplification(
        metric: Any,
        counts: list,
        occupations: list[str],
        labels: list[str],
        planted: dict | None,
        language: str,
        args: Arguments,
    ) -> dict:
        """The slope of the measured share on the planted one (the world only), on the seeds' pooled counts."""
        if planted is None or args.attribute != "gender" or "female" not in labels:
            return {}
        reference = {o: planted.get((language, o)) for o in occupations}
        result = metric.compute(predictions=counts, references=occupations, labels=labels, num_occupations=1,
                                rounds=1, reference=reference, reference_label="female")  # fmt: skip
        return result.get("reference_fit", {})

    @staticmethod
    def control_share(seeds: list[dict], language: str, confidence: float) -> dict[str, Any]:
        """Explicit-gender control in `language`, pooled over seeds: the share of explicitly gendered
        prompts' images perceived as asked (None without such images)."""
        obeyed = sum(s["control"].get(language, [0, 0])[0] for s in seeds)
        total = sum(s["control"].get(language, [0, 0])[1] for s in seeds)
        low, high = wilson_interval(obeyed, total, confidence)
        return {"share": obeyed / total if total else None, "low": low, "high": high, "n": total}

    @staticmethod
    def report(rows: list[dict], comparisons: list[dict], baseline: str, n: int) -> str:
        """The table as the run prints it: each method's distance from the target (its seeds' range)
        beside raw L1 and its floor, the amplification, control, and the tests that survive Holm."""
        lines = [
            f"{n} images per cell for every method (the same prompts and seeds); distance: root mean square over "
            "occupations of the L2 distance from the target, corrected for sampling",
            f"{'method':<32}{'lang':<5}{'seeds':>6}{'distance [95% CI]':>24}{'seed range':>15}{'L1 (floor)':>16}"
            f"{'amplif.':>9}{'control':>9}{'sim.':>7}{'p vs ' + baseline:>14}{'Holm':>8}",
        ]
        for r in rows:
            if r["measurable"]:
                distance = (
                    f"{_number(r['distance'])} [{_number(r['distance_ci_low'])}, {_number(r['distance_ci_high'])}]"
                )
            else:
                distance = "not measurable"
            spread = f"{_number(r['seed_distance_low'])}-{_number(r['seed_distance_high'])}" if r["seeds"] > 1 else ""
            lines.append(
                f"{r['method']:<32}{r['language']:<5}{r['seeds']:>6}{distance:>24}{spread:>15}"
                f"{_number(r['mean_l1']) + ' (' + _number(r['l1_floor']) + ')':>16}{_number(r['amplification'], 2):>9}"
                f"{_number(r['explicit_gender_control'], 2):>9}{_number(r['same_noise_similarity'], 2):>7}"
                f"{_number(r['p_value'], 4):>14}"
                f"{_number(r['p_holm'], 4):>8}"
            )
        lines.append(
            "(not measurable: explicit-gender control below the threshold; p: paired sign-flip test of the squared "
            "distances on the same occupations; amplif.: slope of measured on planted share; sim.: similarity to the "
            "baseline's image from the same seed)"
        )
        significant = [c for c in comparisons if c["p_holm"] is not None and c["p_holm"] < 0.05]
        lines.append(f"pooled over languages x occupations: {len(comparisons)} comparisons, {len(significant)} "
                     "differ after Holm's correction (p < 0.05):")  # fmt: skip
        for c in significant:
            seeds = f"; {c['seeds_better']}/{c['seeds']} seeds alone" if c["seeds"] > 1 else ""
            lines.append(
                f"  {c['method']} vs {c['versus']} ({c['variant']}, {c['cells']} cells): squared distance "
                f"{c['difference_mean']:+.4f} [{c['difference_ci_low']:+.4f}, {c['difference_ci_high']:+.4f}], "
                f"Holm p {c['p_holm']:.4f}{seeds}"
            )
        return "\n".join(lines)

    @staticmethod
    def alignment(run: StageRun, label: str) -> dict[tuple, float]:
        """The mean CLIP score over all occupations, per (intervention, language, variant)."""
        if f"{label}.alignment" not in run.inputs:
            return {}
        found = run.dataset(f"{label}.alignment")
        return {
            (row["intervention"] or "none", row["language"], row["variant"]): row[ALIGNMENT_SCORE]
            for row in found.rows("summary")
            if row["occupation"] == schemas.ALL_OCCUPATIONS
        }

    def figures(self, folder: Path, rows: list[dict], args: Arguments) -> list[Path]:
        from pipelines.reporting.figures import grouped_bars, lines

        figures = []
        for variant in sorted({r["variant"] for r in rows}):
            chosen = [r for r in rows if r["variant"] == variant]
            languages = sorted({r["language"] for r in chosen})
            methods = list(dict.fromkeys(r["method"] for r in chosen))
            by = {(r["method"], r["language"]): r for r in chosen}
            series = {m: [_get(by, m, lang, "mean_l1") for lang in languages] for m in methods}
            errors = {
                m: ([_get(by, m, lang, "mean_l1_ci_low") for lang in languages],
                    [_get(by, m, lang, "mean_l1_ci_high") for lang in languages])
                for m in methods
            }  # fmt: skip
            top = max([v for pair in errors.values() for v in pair[1] if not math.isnan(v)] or [1.0])
            figures += grouped_bars(
                folder / "figures" / f"{variant}_bias_by_method",
                languages,
                series,
                errors,
                title=f"{variant}: perceived {args.attribute}, mean L1 from uniform (95% CI)",
                ylabel="mean L1 from uniform",
                ymax=max(1.0, top) * 1.05,
            )
            families = defaultdict(dict)  # (model, intervention) -> guidance -> mean over languages
            for r in chosen:
                family = f"{r['model'].split('@')[0].split('/')[-1]} {r['intervention']}"
                families[family].setdefault(r["guidance_scale"], []).append(r["mean_l1"])
            scales = sorted({g for f in families.values() for g in f})
            if len(scales) > 1:
                figures += lines(
                    folder / "figures" / f"{variant}_bias_by_guidance",
                    scales,
                    {f: [_mean(values.get(g, [])) for g in scales] for f, values in families.items()},
                    title=f"{variant}: bias against guidance scale (mean over languages)",
                    xlabel="guidance scale",
                    ylabel="mean L1 from uniform",
                )
            labels = list(dict.fromkeys(r["label"] for r in chosen if r["explicit_gender_images"]))
            if labels:
                first = {(r["label"], r["language"]): r for r in chosen}
                figures += grouped_bars(
                    folder / "figures" / "explicit_gender_control",
                    languages,
                    {lab: [_get(first, lab, lang, "explicit_gender_control") for lang in languages] for lab in labels},
                    {
                        lab: (
                            [_get(first, lab, lang, "explicit_gender_control_ci_low") for lang in languages],
                            [_get(first, lab, lang, "explicit_gender_control_ci_high") for lang in languages],
                        )
                        for lab in labels
                    },  # fmt: skip
                    title="Explicit-gender control: images perceived as the gender asked for (95% CI)",
                    ylabel="share obeyed",
                    parity=0.5,
                )
        return figures

    def card(
        self,
        run: StageRun,
        folder: Path,
        rows: list[dict],
        comparisons: list[dict],
        figures: list[Path],
        baseline: str,
        n: int,
        taught: dict[str, dict[str, str]] | None = None,
    ) -> None:
        def number(value: Any, digits: int = 3) -> str:
            return _number(value, digits, missing="–")  # the card's tables: an en dash for no value

        def interval(row: dict, name: str, digits: int = 3) -> str:
            """`value [low, high]` of `distance` (its `_ci_low`/`_ci_high`) or `difference` (`_mean`, ...)."""
            value, low, high = (f"{name}_mean", f"{name}_ci_low", f"{name}_ci_high") if name == "difference" else (
                name, f"{name}_ci_low", f"{name}_ci_high")  # fmt: skip
            if row[value] is None:
                return "–"
            if name == "distance" and not row["measurable"]:
                return "not measurable"
            return f"{number(row[value], digits)} [{number(row[low], digits)}, {number(row[high], digits)}]"

        def seeds(row: dict) -> str:
            if row["seeds"] < 2:
                return "1"
            return f"{row['seeds']} ({number(row['seed_distance_low'])}–{number(row['seed_distance_high'])})"

        dataset_card(
            repo_id=run.output_repo_id,
            title="Debiasing methods compared",
            description=(
                f"Methods (a model at a guidance scale, with a training-free intervention) compared on perceived "
                f"{run.args.attribute}, on the same prompts and image seeds and at the same n, {n} images per "
                f"occupation and prompt, against `{baseline}`. Bias is the *distance "
                "from the target* (uniform unless the bias results say otherwise): per occupation an unbiased "
                "estimate of the squared L2 distance, whose root mean square over occupations compares at any "
                "number of images; raw mean L1 (MAGBIG's) is beside it with its *floor*, what a perfectly fair "
                "occupation shows at the same n. Tests are paired on the same occupations (sign-flip permutation "
                "of the squared distances, Student's t interval): per language against the baseline (config "
                "`methods`), and pooled over languages x occupations for every pair of methods on the same "
                "prompts (config `comparisons`). Every p-value of both is also given Holm-adjusted over the whole "
                "table. A method trained with several seeds shows the mean over seeds, the seeds' range of the "
                "distance and an interval over seeds (training randomness and sampling together); the pooled "
                "comparisons say how many seeds alone are fairer than the other method. *Amplification* (in the "
                "planted-bias world) is the slope of the measured share on the planted one: 1 follows the training "
                "data, above 1 exaggerates it. *Control* is the share of explicitly gendered prompts' images "
                f"perceived as asked: on the baseline's own model, below {run.args.min_control} a row is *not "
                "measurable* (the model does not obey gender words on that template) and is left out of the "
                "tests; for a model trained for a method, lost control is a cost of the method. Fidelity: the "
                "share of *valid images* (exactly one classified face or figure) and each image's *similarity "
                f"to the baseline's image from the same prompt and seed* ({similarity_text(run)}; Shen et al.'s "
                "semantic preservation). Held-out rows (`[held-out]`) are "
                "occupations or languages the method's training data did not have. Costs are work, not time "
                "taken under whatever load: UNet evaluations per image and images seen in "
                f"training for the method; the CLIP score (`{ALIGNMENT_SCORE}`) where it was measured."
            ),
            lineage=run.lineage,
            configs=["methods", "comparisons"],
            folder=folder,
            languages=sorted({r["language"] for r in rows if r["language"]}),
            tables=[
                {
                    "title": "Methods",
                    "columns": [
                        "method",
                        "language",
                        "variant",
                        "guidance",
                        "n / occupation",
                        "seeds (range)",
                        "distance [95% CI]",
                        "mean L1 (floor)",
                        "amplification",
                        "Δ squared distance vs baseline [95% CI]",
                        "p",
                        "p (Holm)",
                        "control",
                        "valid images",
                        "similarity to baseline (same noise)",
                        "UNet passes / image",
                        "training images",
                        "CLIP",
                    ],
                    "rows": [
                        [
                            r["method"],
                            r["language"],
                            r["variant"],
                            number(r["guidance_scale"], 1),
                            number(r["images_per_occupation"], 0),
                            seeds(r),
                            interval(r, "distance"),
                            f"{number(r['mean_l1'])} ({number(r['l1_floor'])})",
                            interval(r, "amplification", 2) if r["amplification"] is not None else "–",
                            interval(r, "difference", 4),
                            number(r["p_value"], 4),
                            number(r["p_holm"], 4),
                            number(r["explicit_gender_control"], 2),
                            number(r["valid_share"], 2),
                            number(r["same_noise_similarity"], 3),
                            number(r["unet_passes_per_image"], 0),
                            "–" if r["training_images"] is None else f"{r['training_images']:,}",
                            number(r["clip_score"], 2),
                        ]
                        for r in rows
                    ],
                },
                {
                    "title": "Pairs of methods, pooled over languages and occupations",
                    "columns": [
                        "prompts",
                        "method",
                        "versus",
                        "cells",
                        "Δ squared distance [95% CI]",
                        "p",
                        "p (Holm)",
                        "seeds fairer alone",
                    ],
                    "rows": [
                        [
                            c["variant"],
                            c["method"],
                            c["versus"],
                            c["cells"],
                            interval(c, "difference", 4),
                            number(c["p_value"], 4),
                            number(c["p_holm"], 4),
                            f"{c['seeds_better']}/{c['seeds']}" if c["seeds"] > 1 else "–",
                        ]
                        for c in comparisons
                    ],
                },
            ],  # fmt: skip
            notes=[
                # Two fine-tunes taught different forms compare them on the same prompts (does a model taught
                # the inclusive form debias the generic masculine?).
                *(
                    f"`{label}` was fine-tuned on captions whose gender-neutral form is "
                    f"{describe_neutral_forms(forms)}."
                    for label, forms in (taught or {}).items()
                ),
                *(f"![{p.stem}]({p.relative_to(folder).as_posix()})" for p in figures if p.suffix == ".png"),
            ],
            tags=["bias", "debiasing", "comparison", "results"],
        ).save(folder / "README.md")


def seed_specs(label: str, spec: str) -> dict[str, str]:
    """`{input name: images}` of a method: `label` for one images dataset, `label#i` for each of a
    method trained with several seeds (`images-s0|images-s1`)."""
    specs = [part.strip() for part in spec.split("|")]
    if not all(specs):
        raise ConfigError(f"methods: {label}={spec!r} has an empty seed; images-s0|images-s1|...")
    return {label: specs[0]} if len(specs) == 1 else {f"{label}#{i}": one for i, one in enumerate(specs)}


def unet_passes(steps: int | None, guidance: float, intervention: str) -> float:
    """UNet evaluations per image: a batch of two per step with classifier-free guidance (above 1),
    two more with SEGA's two editing prompts (MAGBIG's male and female person), one without."""
    if not steps:
        return math.nan
    per_step = 1 if not guidance > 1 else 4 if intervention == "sega" else 2
    return float(steps * per_step)


def model_training(run: StageRun, model: str) -> dict[str, Any]:
    """What training a model made by `train_text_to_image` or `align_distribution` saw, from its card:
    `training_images` (steps x batch x gradient accumulation; for distributional alignment, the images
    it generated and classified, one batch per step and process) and `training_cells`, the (caption
    language, occupation) pairs of its training dataset or of the prompts it was aligned on, and
    `caption_forms`, the gender-neutral form of its captions per language (as its training dataset's
    card records it); None for any other model."""
    unknown = {"training_images": None, "training_cells": None, "caption_forms": None}
    try:
        metadata = card_metadata(run.store.resolve(model, "model"))
    except UserError:
        return unknown
    lineage = metadata.get("lineage") or {}
    parameters = lineage.get("parameters") or {}
    alignment = metadata.get("alignment") or {}
    if lineage.get("stage") == "align_distribution" and alignment.get("training_cells"):
        return {
            "training_images": alignment.get("images_generated"),
            "training_cells": {tuple(cell) for cell in alignment["training_cells"]},
            "caption_forms": None,
        }
    if lineage.get("stage") != "train_text_to_image" or not parameters.get("max_train_steps"):
        return unknown
    accumulation = parameters.get("gradient_accumulation_steps") or 1
    seen = int(parameters["max_train_steps"]) * int(parameters.get("train_batch_size") or 1) * int(accumulation)
    cells = forms = None
    dataset = (lineage.get("inputs") or {}).get("dataset_name")
    try:
        training = DatasetArtifact(run.store.resolve(dataset, "dataset"), dataset)
        cells = {(r["caption_language"], r["profession"]) for config in training.configs
                 for r in training.rows(config, ["caption_language", "profession"])}  # fmt: skip
        forms = training.metadata.get("caption_forms")
    except (UserError, TypeError, KeyError, ValueError):
        pass  # a dataset from outside the store: what it holds is unknown
    return {"training_images": seen, "training_cells": cells, "caption_forms": forms}


def training_images(found: dict, base_model: str) -> int | None:
    """The training a method added: its model's, unless it is the baseline's own model."""
    return 0 if found["model"] == base_model else found["training_images"]


def similarity_text(run: StageRun) -> str:
    """What the similarity column measures, for the card."""
    if run.args.similarity_model is None:
        return "1 - mean absolute pixel difference at up to 64 px"
    pretrained = f", pretrained `{run.args.similarity_pretrained}`" if run.args.similarity_pretrained else ""
    return f"cosine of the image features of `{run.inputs['similarity_model']}`{pretrained}"


def similarity(image: np.ndarray, other: np.ndarray, features: bool) -> float:
    """Cosine of two unit feature vectors, or 1 - the mean absolute difference of two pictures in [0, 1]."""
    return float(image @ other) if features else 1.0 - float(np.abs(image - other).mean())


def _number(value: Any, digits: int = 3, missing: str = "-") -> str:
    """A value at `digits` decimals, or `missing` for None and nan."""
    return missing if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _mean(values: list[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def _get(table: dict, label: str, language: str, name: str) -> float:
    row = table.get((label, language))
    return math.nan if row is None or row[name] is None else row[name]


STAGE = CompareMethods()
run = STAGE.run

if __name__ == "__main__":
    STAGE.main()
