"""The study's published results, loaded once for the language-comparison Space.

A model version is named by its images dataset (`label=ns/images[@rev]`). Everything else is found
by lineage, never by name: the attributes dataset `classify` made from those images, the bias
results `evaluate_bias` made from those attributes, and the CLIP scores `evaluate_alignment` made
from the images (`pipelines.harness.lineage`). Everything is read through the toolkit's store (a
local folder or the Hub, chosen by `T2I_BIAS_STORE` / `T2I_BIAS_STORE_ROOT`), so a visitor's
choices only ever select among names loaded here and never reach a path. Images are served from
files named by their content and written once, so a file being served is never rewritten.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from pipelines.artifacts.dataset_files import decode_image
from pipelines.artifacts.reader import DatasetArtifact
from pipelines.artifacts.store import HubStore, Store, card_metadata, open_store, parse_ref
from pipelines.errors import UserError
from pipelines.harness import lineage
from pipelines.harness.lineage import derived_from_any, version_refs
from pipelines.prompting.grammar import LANGUAGES

VERSIONS_ENV = "T2I_BIAS_SPACE_VERSIONS"
METHODS_ENV = "T2I_BIAS_SPACE_METHODS"
CACHE_ENV = "T2I_BIAS_SPACE_CACHE"
DEFAULT_VERSIONS = "base=world-base-eval,debiased=world-debiased-eval"
# The variant the Space shows first: the toolkit's face prompts, then MAGBIG's direct ones.
PREFERRED_VARIANTS = ("eval_direct", "magbig_direct", "eval_indirect", "magbig_indirect")
ATTRIBUTES = ("gender", "race", "age")


MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>#|])")


def plain(text: str) -> str:
    """Text shown as written in Markdown: a German "Lehrer*in" keeps its gender star."""
    return MARKDOWN_SPECIAL.sub(r"\\\1", text)


def number(value: object, digits: int = 3) -> str:
    """Every number the Space shows: three decimals, a dash where there is none."""
    return "–" if value is None or (isinstance(value, float) and pd.isna(value)) else f"{value:.{digits}f}"


def interval(value: object, low: object, high: object) -> str:
    """`0.123 [0.100, 0.150]`: a value with its 95% interval, in brackets, always three decimals."""
    if value is None or pd.isna(value):
        return "–"
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return number(value)
    return f"{number(value)} [{number(low)}, {number(high)}]"


# Columns of the Space's tables that are settings or counts, not estimates: shown as set or counted.
AS_SET = {"guidance": "{:.1f}"}
P_VALUES = ("p (paired)", "p (Holm)")
COUNTS = ("images", "occupations", "seeds", "passes", "cells")


def p_value(value: object) -> str:
    """A p-value with three decimals, or `<0.001` (a permutation test's smallest is not zero).

    Example:
        >>> [p_value(v) for v in (0.0312, 0.0002, float("nan"))]
        ['0.031', '<0.001', '–']
    """
    return "–" if value is None or pd.isna(value) else ("<0.001" if value < 0.0005 else f"{value:.3f}")


def table_formats(table: pd.DataFrame) -> dict[str, object]:
    """How each float column of a table is shown: estimates with three decimals, p-values down to
    `<0.001`, counts as integers, settings as they were set."""
    formats: dict[str, object] = {}
    for column in table.columns:
        values = table[column].dropna()
        if not pd.api.types.is_float_dtype(table[column]):
            continue
        if column in P_VALUES:
            formats[column] = p_value
        elif column in AS_SET:
            formats[column] = AS_SET[column]
        elif any(word in column for word in COUNTS) and values.map(float.is_integer).all():
            formats[column] = "{:.0f}"
        else:
            formats[column] = "{:.3f}"
    return formats


class StudyError(ValueError):
    """A version the Space cannot show: named, with what is missing."""


@dataclass
class Version:
    name: str
    images: DatasetArtifact
    refs: dict[str, str]  # images, attributes, bias, alignment: ns/name@revision
    attributes: pd.DataFrame
    bias_summary: pd.DataFrame
    bias_per_occupation: pd.DataFrame
    alignment: pd.DataFrame = field(default_factory=pd.DataFrame)
    made_by: dict[str, str] = field(default_factory=dict)  # what ran: images, classifier(_name), clip, mclip


def short(ref: str) -> str:
    """`ns/name@<40 hex>` as `ns/name@<7 hex>`."""
    repo, _, revision = str(ref).partition("@")
    return f"{repo}@{revision[:7]}" if revision else repo


def read_config(artifact: DatasetArtifact, config: str, columns: list[str] | None = None) -> pd.DataFrame:
    if config not in artifact.configs:
        return pd.DataFrame(columns=columns or [])
    files = artifact.files(config)
    if not files:
        return pd.DataFrame(columns=columns or [])
    return pd.concat([pq.read_table(path, columns=columns).to_pandas() for path in files], ignore_index=True)


def without_interventions(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of the prompts as written (no training-free intervention)."""
    if "intervention" not in table.columns:
        return table
    return table[table["intervention"].fillna("none") == "none"].reset_index(drop=True)


class Study:
    """Every version's bias, alignment and attribute tables, and its images as immutable files."""

    def __init__(
        self,
        store: Store,
        versions: dict[str, str],
        namespace: str | None = None,
        cache: Path | None = None,
        methods: str | None = None,
    ):
        if not versions:
            raise StudyError(f"{VERSIONS_ENV}: no model version given")
        self.store = store
        self.namespace = namespace or "t2i-bias"
        self.cache = Path(cache or os.environ.get(CACHE_ENV) or tempfile.mkdtemp(prefix="t2i-bias-space-"))
        self.cache.mkdir(parents=True, exist_ok=True)
        self.undecodable: set[str] = set()  # the stored images (by sha256) left out: they cannot be decoded
        self.versions = {name: self._load(name, spec) for name, spec in versions.items()}
        self.methods_ref, self.methods, self.comparisons = self._load_methods(methods)
        variants = {v for version in self.versions.values() for v in version.attributes["variant"].unique()}
        self.variant = next((v for v in PREFERRED_VARIANTS if v in variants), sorted(variants)[0])
        found = {
            language
            for version in self.versions.values()
            for language in version.attributes.loc[version.attributes["variant"] == self.variant, "language"].unique()
        }
        self.languages = [code for code in LANGUAGES if code in found]
        self.occupations = sorted(
            {
                o
                for v in self.versions.values()
                for o in v.attributes.loc[v.attributes["variant"] == self.variant, "profession"]
            }
        )

    def _load(self, name: str, spec: str) -> Version:
        try:
            refs = version_refs(self.store, self.namespace, name, spec)
        except UserError as err:
            raise StudyError(str(err)) from None
        images = DatasetArtifact(self.store.resolve(refs["images"], "dataset"), refs["images"])
        attributes = DatasetArtifact(self.store.resolve(refs["attributes"], "dataset"), refs["attributes"])
        bias = DatasetArtifact(self.store.resolve(refs["bias"], "dataset"), refs["bias"])
        alignment = (
            DatasetArtifact(self.store.resolve(refs["alignment"], "dataset"), refs["alignment"])
            if "alignment" in refs
            else None
        )
        made_by = self._made_by(images, attributes, alignment)
        columns = ["prompt_id", "language", "variant", "profession", "sample_index", "seed", "status"]
        columns += list(ATTRIBUTES)
        # The prompts as written: configs of training-free interventions belong to the methods tab.
        plain = [c for c in attributes.configs if attributes.config_info(c).get("intervention", "none") == "none"]
        frames = [read_config(attributes, config, columns) for config in plain]
        return Version(
            name=name,
            images=images,
            refs=refs,
            attributes=pd.concat(frames, ignore_index=True),
            bias_summary=without_interventions(read_config(bias, "summary")),
            bias_per_occupation=without_interventions(read_config(bias, "per_occupation")),
            alignment=without_interventions(read_config(alignment, "summary"))
            if alignment is not None
            else pd.DataFrame(),
            made_by=made_by,
        )

    def _made_by(
        self, images: DatasetArtifact, attributes: DatasetArtifact, alignment: DatasetArtifact | None
    ) -> dict[str, str]:
        """What made a version's numbers, read from its datasets' lineage: the model that drew the
        images, the classifier and face detector, the CLIP models (said to be random when their card
        says so). The Space names these, never a model that did not run."""
        drawn_by = images.lineage.get("inputs", {}).get("model")
        out = {"images": short(drawn_by or "unknown") + (self._random_note(drawn_by) if drawn_by else "")}
        parameters = attributes.lineage.get("parameters", {})
        described = attributes.metadata.get("classifier_checkpoints") or {}
        classifier = out["classifier_name"] = str(
            described.get("classifier") or parameters.get("classifier") or "unknown"
        )
        model = attributes.lineage.get("inputs", {}).get("classifier_model")
        if model:
            classifier += f" ({short(model)}{self._random_note(model)})"
        if described.get("cue"):  # the planted-bias world's reader: it sees what the world drew, not a face
            classifier += f": {described['cue']} (a stand-in for a face classifier)"
        detector = parameters.get("detector")
        found = f"faces found by {detector}" if detector not in (None, "none") else "no face detector: the whole image"
        out["classifier"] = f"{classifier}; {found}"
        if alignment is not None:
            inputs, parameters = alignment.lineage.get("inputs", {}), alignment.lineage.get("parameters", {})
            for key, label in (("clip_model", "clip"), ("multilingual_clip_model", "mclip")):
                if inputs.get(key):
                    pretrained = parameters.get(key.replace("_model", "_pretrained"))
                    named = short(inputs[key]) + (f" / {pretrained}" if pretrained else "")
                    out[label] = named + self._random_note(inputs[key])
        return out

    def _random_note(self, ref: str) -> str:
        """`: random weights` when the model's card is tagged so (the offline demo's tiny models)."""
        try:
            tags = card_metadata(self.store.resolve(ref, "model")).get("tags") or []
        except Exception:  # noqa: BLE001 - a model the store cannot open is named without the note
            return ""
        return ", random weights: its outputs are noise" if "random-weights" in tags else ""

    @property
    def reported_attributes(self) -> list[str]:
        """The attributes any version's classifier reported (a gender-only classifier: gender)."""
        found = {a for v in self.versions.values() for a in v.bias_per_occupation.get("attribute", [])}
        return [attribute for attribute in ATTRIBUTES if attribute in found]

    def made_by_markdown(self) -> str:
        """What made each version's numbers, from its datasets' lineage (never a model that did not run)."""
        labels = {"images": "images drawn by", "classifier": "perceived attributes by", "clip": "CLIP (English texts)",
                  "mclip": "multilingual CLIP"}  # fmt: skip
        lines = ["### What made these numbers", ""]
        for name, version in self.versions.items():
            parts = [
                f"{label}: {plain(version.made_by[key])}" for key, label in labels.items() if key in version.made_by
            ]
            lines.append(f"- **{plain(name)}**: " + "; ".join(parts))
        note = self.missing_attributes_note()
        return "\n".join(lines + (["", note] if note else []))

    def missing_attributes_note(self) -> str:
        """One line naming the attributes not shown and why; empty when all are reported."""
        missing = [a for a in ATTRIBUTES if a not in self.reported_attributes]
        if not missing:
            return ""
        classifiers = sorted({v.made_by.get("classifier_name", "unknown") for v in self.versions.values()})
        return (
            f"Perceived {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not shown: the classifier "
            f"that ran ({', '.join(classifiers)}) reports {', '.join(self.reported_attributes) or 'nothing'} only."
        )

    def _load_methods(self, spec: str | None) -> tuple[str | None, pd.DataFrame, pd.DataFrame]:
        """The methods comparison (its methods and its pooled comparisons): the one named, else the newest
        made from any version's images."""
        if spec:
            try:
                ref = parse_ref(spec, namespace=self.namespace)
                pinned = f"{ref.repo_id}@{self.store.revision_of(ref, 'dataset')}"
            except UserError as err:
                raise StudyError(f"{METHODS_ENV}: {err}") from None
        else:
            images = {version.refs["images"] for version in self.versions.values()}
            found = derived_from_any(self.store, self.namespace, images, "compare_methods")
            if not found:
                return None, pd.DataFrame(), pd.DataFrame()
            pinned = found[0]
        artifact = DatasetArtifact(self.store.resolve(pinned, "dataset"), pinned)
        return pinned, read_config(artifact, "methods"), read_config(artifact, "comparisons")

    def methods_table(self, language: str) -> pd.DataFrame:
        """The methods of one language, fairest first (by distance from the target) within each prompt
        set (the Space's own prompt variant first): bias, the paired tests and the costs."""
        if self.methods.empty:
            return pd.DataFrame()
        rows = self.methods[self.methods["language"] == language]
        # Tables made before a column existed still show: a missing column reads as unknown.
        column = lambda name, default=None: rows[name] if name in rows else pd.Series(default, index=rows.index)  # noqa: E731
        measurable = column("measurable", True).fillna(True).astype(bool)

        def bracketed(row: pd.Series, value: str, low: str, high: str) -> str:
            if value not in row or pd.isna(row[value]):
                return "–"
            if value == "distance" and not measurable[row.name]:
                return "not measurable"
            return interval(row[value], row[low], row[high])

        table = pd.DataFrame(
            {
                "method": rows["method"],
                "prompts": rows["variant"],
                "guidance": rows["guidance_scale"].round(1),
                "split": column("split", "all"),
                "occupations": column("num_occupations"),
                "images / occupation": column("images_per_occupation"),
                "distance [95% CI]": [
                    bracketed(r, "distance", "distance_ci_low", "distance_ci_high") for _, r in rows.iterrows()
                ],
                "mean L1 [95% CI]": [
                    bracketed(r, "mean_l1", "mean_l1_ci_low", "mean_l1_ci_high") for _, r in rows.iterrows()
                ],
                "Δ vs baseline [95% CI]": [
                    bracketed(r, "difference_mean", "difference_ci_low", "difference_ci_high")
                    for _, r in rows.iterrows()
                ],
                "p (paired)": rows["p_value"].round(4),
                "p (Holm)": rows["p_holm"].round(4),
                "seeds": column("seeds", 1),
                "amplification": [
                    bracketed(r, "amplification", "amplification_ci_low", "amplification_ci_high")
                    for _, r in rows.iterrows()
                ],
                "explicit-gender control": rows["explicit_gender_control"].round(3),
                "UNet passes / image": column("unet_passes_per_image"),
                "CLIP": rows["clip_score"].round(3),
                # Not measurable ranks last: its distance says nothing about the method.
                "rank by": rows["distance"].where(measurable, float("inf")),
            }
        )
        table["own"] = rows["variant"] != self.variant  # False sorts first: the Space's variant on top
        # Ranked by the distance from the target (raw L1 would rank by sample size too); methods as fair
        # as each other in the order of their names, every time.
        order = ["own", "prompts", "rank by", "method"]
        return table.sort_values(order).drop(columns=["rank by", "own"]).reset_index(drop=True)

    def comparisons_table(self) -> pd.DataFrame:
        """The pooled comparisons of two methods over every cell both measured, with their tests
        corrected together with the table's (Holm)."""
        rows = self.comparisons
        if rows.empty:
            return pd.DataFrame()

        return pd.DataFrame(
            {
                "prompts": rows["variant"],
                "method": rows["method"],
                "versus": rows["versus"],
                "attribute": rows["attribute"],
                "cells": rows["cells"],
                "Δ distance² [95% CI]": [
                    interval(r["difference_mean"], r["difference_ci_low"], r["difference_ci_high"])
                    for _, r in rows.iterrows()
                ],
                "p (paired)": rows["p_value"].round(4),
                "p (Holm)": rows["p_holm"].round(4),
                "seeds fairer alone": [
                    f"{int(b)} of {int(n)}" if pd.notna(n) and n > 1 else "–"
                    for b, n in zip(
                        rows.get("seeds_better", [None] * len(rows)), rows.get("seeds", [None] * len(rows))
                    )
                ],
            }
        ).reset_index(drop=True)

    def config(self, version: str, language: str) -> str | None:
        images = self.versions[version].images
        for config in images.configs:
            info = images.config_info(config)
            if (
                info.get("language") == language
                and info.get("variant") == self.variant
                and info.get("intervention", "none") == "none"
            ):
                return config
        return None

    @functools.lru_cache(maxsize=512)
    def images(self, version: str, language: str, occupation: str, limit: int = 8) -> tuple[str, ...]:
        """Paths of the first images of one occupation, as files named by their content, written once
        (none for an image that cannot be decoded)."""
        samples = self.samples(version, language, occupation, limit)
        return tuple(sample["path"] for sample in samples if sample["path"] is not None)

    @functools.lru_cache(maxsize=512)
    def samples(self, version: str, language: str, occupation: str, limit: int = 8) -> tuple[dict, ...]:
        """The first images of one occupation, in sample order: each one's sample index, seed, file
        (named by its content, written once), face status and perceived attributes. An image that
        cannot be decoded keeps its place, without a file and with the status "undecodable" (every
        stage of the study skips it, so it is in no figure; counted in `undecodable`)."""
        config = self.config(version, language)
        if config is None:
            return ()
        v = self.versions[version]
        found = v.attributes[
            (v.attributes["language"] == language)
            & (v.attributes["profession"] == occupation)
            & (v.attributes["variant"] == self.variant)
        ]
        perceived = {int(row["sample_index"]): row for _, row in found.iterrows()}
        out = []
        for path in v.images.files(config):
            table = pq.read_table(
                path, columns=["sample_index", "seed", "image"], filters=[("profession", "=", occupation)]
            ).to_pylist()
            for row in sorted(table, key=lambda row: row["sample_index"]):
                index = int(row["sample_index"])
                path = self._immutable(row["image"]["bytes"])
                attributes = None if path is None else perceived.get(index)
                status = "undecodable" if path is None else None if attributes is None else str(attributes["status"])
                out.append(
                    {
                        "sample_index": index,
                        "seed": int(row["seed"]),
                        "path": None if path is None else str(path),
                        "status": status,
                        **{
                            attribute: None
                            if attributes is None
                            or attribute not in self.reported_attributes
                            or pd.isna(attributes[attribute])
                            else str(attributes[attribute])
                            for attribute in ATTRIBUTES
                        },
                    }
                )
                if len(out) >= limit:
                    return tuple(out)
        return tuple(out)

    def paired(self, versions: list[str], language: str, occupation: str, limit: int = 8) -> list[dict]:
        """The versions' images of the same sample (the same seed where both drew it) side by side:
        one entry per sample index with each version's sample, or None where a version has none."""
        by_version = {
            v: {s["sample_index"]: s for s in self.samples(v, language, occupation, limit)} for v in versions
        }
        indices = sorted({index for samples in by_version.values() for index in samples})[:limit]
        return [{"sample_index": i, **{v: by_version[v].get(i) for v in versions}} for i in indices]

    def _immutable(self, data: bytes) -> Path | None:
        """A stored image as the 8-bit RGB PNG every stage of the study sees (`decode_image`: upright,
        16-bit scaled, CMYK, palette and alpha converted), in a file named by the stored bytes and
        written once; None when it cannot be decoded (counted in `undecodable`)."""
        digest = hashlib.sha256(data).hexdigest()
        path = self.cache / f"{digest}.rgb.png"  # not the name an earlier Space gave its undecoded copy
        if not path.is_file():
            from PIL import Image

            pixels = decode_image({"bytes": data, "path": None})
            if pixels is None:
                self.undecodable.add(digest)
                return None
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(buffer.getvalue())
            os.replace(tmp, path)  # whole or absent; never rewritten once there
        return path

    @functools.lru_cache(maxsize=512)
    def prompt(self, version: str, language: str, occupation: str) -> str:
        config = self.config(version, language)
        if config is None:
            return ""
        for path in self.versions[version].images.files(config):
            table = pq.read_table(path, columns=["profession", "prompt"], filters=[("profession", "=", occupation)])
            if table.num_rows:
                return table.column("prompt")[0].as_py()
        return ""

    def per_occupation(self, version: str, language: str, occupation: str, attribute: str) -> dict | None:
        per = self.versions[version].bias_per_occupation
        match = per[
            (per["language"] == language)
            & (per["variant"] == self.variant)
            & (per["attribute"] == attribute)
            & (per["occupation"] == occupation)
        ]
        return match.iloc[0].to_dict() if len(match) else None

    def shares(self, version: str, language: str, occupation: str, attribute: str) -> pd.DataFrame:
        """Each label's share of the images with exactly one face, with its bootstrap interval."""
        row = self.per_occupation(version, language, occupation, attribute)
        if row is None:
            return pd.DataFrame(columns=["label", "share", "low", "high", "version"])
        return pd.DataFrame(
            {
                "label": list(row["labels"]),
                "share": list(row["distribution"]),
                "low": list(row["distribution_ci_low"]),
                "high": list(row["distribution_ci_high"]),
                "version": version,
            }
        )

    def metrics(self, version: str, language: str, occupation: str) -> dict[str, float | int | str | None]:
        v = self.versions[version]
        rows = v.attributes[
            (v.attributes["language"] == language)
            & (v.attributes["profession"] == occupation)
            & (v.attributes["variant"] == self.variant)
        ]
        out: dict[str, float | int | str | None] = {
            "images": len(rows),
            "rejection_rate": float((rows["status"] != "ok").mean()) if len(rows) else None,
        }
        for attribute in ATTRIBUTES:
            row = self.per_occupation(version, language, occupation, attribute)
            out[f"{attribute}_l1"] = float(row["l1"]) if row else None
        female = self.per_occupation(version, language, occupation, "gender")
        if female and "female" in list(female["labels"]):
            index = list(female["labels"]).index("female")
            out["female_share"] = float(female["distribution"][index])
            out["female_share_ci"] = [
                float(female["distribution_ci_low"][index]),
                float(female["distribution_ci_high"][index]),
            ]
        summary = self.summary(version, language, "gender")
        out["gender_exp_max_l1"] = float(summary["exp_max_l1"]) if summary is not None else None
        align = v.alignment
        if len(align):
            match = align[
                (align["language"] == language)
                & (align["occupation"] == occupation)
                & (align["variant"] == self.variant)
            ]
            for column in ("clip_en_indirect", "clip_en_occupation", "clip_en_person", "mclip_own_prompt"):
                value = match[column].iloc[0] if len(match) else None
                out[column] = float(value) if value is not None and pd.notna(value) else None
        return out

    def summary(self, version: str, language: str, attribute: str) -> pd.Series | None:
        summary = self.versions[version].bias_summary
        match = summary[
            (summary["language"] == language)
            & (summary["attribute"] == attribute)
            & (summary["variant"] == self.variant)
        ]
        return match.iloc[0] if len(match) else None

    def labels(self, attribute: str) -> list[str]:
        """The labels the classifier gave for an attribute, in the order its metrics list them."""
        for version in self.versions.values():
            per = version.bias_per_occupation
            rows = per[(per["attribute"] == attribute) & (per["variant"] == self.variant)]
            if len(rows):
                return [str(label) for label in rows.iloc[0]["labels"]]
        return []

    def share(self, version: str, language: str, occupation: str, attribute: str, label: str) -> float | None:
        return self.share_interval(version, language, occupation, attribute, label)[0]

    def share_interval(
        self, version: str, language: str, occupation: str, attribute: str, label: str
    ) -> tuple[float | None, float | None, float | None]:
        """The share of faces perceived as `label` and its bootstrap interval (Nones: not measured)."""
        row = self.per_occupation(version, language, occupation, attribute)
        if row is None or label not in list(row["labels"]):
            return None, None, None
        index = list(row["labels"]).index(label)
        return tuple(float(row[key][index]) for key in ("distribution", "distribution_ci_low", "distribution_ci_high"))

    def heatmap(
        self, version: str, attribute: str = "gender", label: str = "female", versus: str | None = None
    ) -> pd.DataFrame:
        """Occupations x languages: the share of faces perceived as `label`, or with `versus` the
        difference (version - versus) of those shares (NaN: no classified face in either)."""
        table = pd.DataFrame(index=self.occupations, columns=[LANGUAGES[code] for code in self.languages], dtype=float)
        for code in self.languages:
            for occupation in self.occupations:
                share = self.share(version, code, occupation, attribute, label)
                if versus is not None:
                    other = self.share(versus, code, occupation, attribute, label)
                    share = None if share is None or other is None else share - other
                table.loc[occupation, LANGUAGES[code]] = share if share is not None else float("nan")
        table.index.name = "occupation"
        return table

    def has_reference(self) -> bool:
        """Whether any version's bias results hold a reference share per occupation (planted or given)."""
        return any(
            "reference_share" in v.bias_per_occupation and v.bias_per_occupation["reference_share"].notna().any()
            for v in self.versions.values()
        )

    def reference_points(self, version: str, language: str, attribute: str = "gender") -> tuple[pd.DataFrame, dict]:
        """Per occupation, the reference share (planted or given) of the summary's reference label and
        the measured share of it; and the summary's fit: label, slope (amplification) and its interval."""
        summary = self.summary(version, language, attribute)
        label = None if summary is None else summary.get("reference_label")
        points = pd.DataFrame(columns=["occupation", "reference", "measured", "n"])
        if label is None or pd.isna(label):
            return points, {}
        per = self.versions[version].bias_per_occupation
        rows = per[(per["language"] == language) & (per["variant"] == self.variant) & (per["attribute"] == attribute)]
        records = []
        for _, row in rows.iterrows():
            labels = list(row["labels"])
            if pd.isna(row.get("reference_share")) or label not in labels or not row["n"]:
                continue
            measured = float(row["distribution"][labels.index(label)])
            records.append({"occupation": row["occupation"], "reference": float(row["reference_share"]),
                            "measured": measured, "n": int(row["n"])})  # fmt: skip
        fit = {
            "label": str(label),
            **{key: summary.get(key) for key in ("amplification", "amplification_ci_low", "amplification_ci_high")},
        }
        return pd.DataFrame(records, columns=points.columns), fit

    def leaderboard(self) -> pd.DataFrame:
        """Languages x versions over all occupations, fairest first (by the gender distance from the
        target, which is corrected for sampling and so compares at any number of images): the numbers
        as published, the formatting left to the page."""
        rows = []
        for name in self.versions:
            for language in self.languages:
                gender = self.summary(name, language, "gender")
                if gender is None:
                    continue
                published = lambda key, row=gender: None if key not in row or pd.isna(row[key]) else float(row[key])  # noqa: E731
                occupations = int(gender["num_occupations"]) if pd.notna(gender.get("num_occupations")) else 0
                row = {
                    "language": LANGUAGES[language],
                    "version": name,
                    "images / occupation": round(int(gender["num_images"]) / occupations, 1) if occupations else None,
                    "gender distance": published("distance"),
                    "gender distance low": published("distance_ci_low"),
                    "gender distance high": published("distance_ci_high"),
                    "gender L1": published("mean_l1"),
                    "gender L1 low": published("mean_l1_ci_low"),
                    "gender L1 high": published("mean_l1_ci_high"),
                    "L1 floor": published("mean_l1_floor"),
                    "exp. max L1": published("exp_max_l1"),
                    "exp. max L2": published("exp_max_l2"),
                    "random L1": published("random_exp_max_l1"),
                    "non-binary share": published("outside_share"),
                    "face rejection": published("rejection_rate"),
                }
                for attribute in (a for a in ("race", "age") if a in self.reported_attributes):
                    other = self.summary(name, language, attribute)
                    row[f"{attribute} distance"] = float(other["distance"]) if other is not None else None
                    row[f"{attribute} L1"] = float(other["mean_l1"]) if other is not None else None
                if self.has_reference():
                    row["amplification"] = published("amplification")
                    row["amplification low"] = published("amplification_ci_low")
                    row["amplification high"] = published("amplification_ci_high")
                align = self.versions[name].alignment
                if len(align):
                    match = align[
                        (align["language"] == language)
                        & (align["occupation"] == "__all__")
                        & (align["variant"] == self.variant)
                    ]
                    for column, label in (
                        ("clip_en_occupation", "CLIP (English texts)"),
                        ("mclip_own_prompt", "mCLIP own prompt"),
                    ):
                        value = match[column].iloc[0] if len(match) else None
                        row[label] = float(value) if value is not None and pd.notna(value) else None
                rows.append(row)
        table = pd.DataFrame(rows)
        if table.empty:
            return table
        # Fairest first; rows as fair as each other in language and version order, every time.
        return table.sort_values(["gender distance", "language", "version"], na_position="last").reset_index(drop=True)

    def links(self) -> dict[str, dict[str, str]]:
        """Each version's datasets at their revisions: Hub URLs, or refs of the local store."""
        out = {}
        for name, version in self.versions.items():
            out[name] = {}
            for kind, ref in version.refs.items():
                repo, _, revision = ref.partition("@")
                if isinstance(self.store, HubStore):
                    out[name][kind] = f"https://huggingface.co/datasets/{repo}/tree/{revision}"
                else:
                    out[name][kind] = ref
        return out


def parse_versions(text: str) -> dict[str, str]:
    """`base=ns/images-base-eval,finetuned=ns/images-finetuned-eval@v1` as a dict."""
    try:
        return lineage.parse_versions(text, VERSIONS_ENV)
    except UserError as err:
        raise StudyError(str(err)) from None


def load_study_from_env() -> Study:
    """The study the environment names, else the `space_config.json` publish_space wrote beside the app."""
    config_file = Path(__file__).resolve().parent / "space_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    store = open_store(os.environ.get("T2I_BIAS_STORE") or config.get("store"))
    namespace = os.environ.get("T2I_BIAS_NAMESPACE") or config.get("namespace", "t2i-bias")
    versions = os.environ.get(VERSIONS_ENV) or config.get("versions", DEFAULT_VERSIONS)
    methods = os.environ.get(METHODS_ENV) or config.get("methods")
    return Study(store, parse_versions(versions), namespace, methods=methods)
