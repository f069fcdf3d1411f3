"""The study's published results, loaded once for the language-comparison Space.

A model version is named by its evaluation images dataset (`ns/images-base-eval[@rev]`). The other
artifacts follow the study's naming and lineage: `<images>-bias` (from `evaluate_bias`) names the
attributes revision it measured, whose card names the images revision it classified, and
`<images>-alignment` holds the CLIP scores. Everything is read through the toolkit's store
(local folder or Hub, chosen by `T2I_BIAS_STORE` / `T2I_BIAS_STORE_ROOT`), so a visitor's choices
only ever select among names loaded here, never reach a path.
"""

from __future__ import annotations

import functools
import io
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from PIL import Image

from pipelines.artifacts.store import Store, lineage_of, open_store, parse_ref
from pipelines.prompting.grammar import LANGUAGES

VERSIONS_ENV = "T2I_BIAS_SPACE_VERSIONS"
DEFAULT_VERSIONS = "base=images-base-eval,finetuned=images-finetuned-eval"
VARIANT = "eval_direct"
ATTRIBUTES = ("gender", "race", "age")


@dataclass
class Version:
    name: str
    images: Path
    images_ref: str
    attributes: pd.DataFrame
    bias_summary: pd.DataFrame
    bias_per_occupation: pd.DataFrame
    alignment: pd.DataFrame


def read_config(folder: Path, config: str, columns: list[str] | None = None) -> pd.DataFrame:
    shards = sorted((folder / "data" / config).glob("*.parquet"))
    if not shards:
        return pd.DataFrame(columns=columns or [])
    return pd.concat([pq.read_table(shard, columns=columns).to_pandas() for shard in shards], ignore_index=True)


class Study:
    """Every version's bias, alignment and attribute tables, and lazy access to its images."""

    def __init__(self, store: Store, versions: dict[str, str], namespace: str | None = None):
        self.store = store
        self.versions: dict[str, Version] = {}
        for name, spec in versions.items():
            self.versions[name] = self._load(name, parse_ref(spec, namespace=namespace))
        found = {language for v in self.versions.values() for language in v.attributes["language"].unique()}
        self.languages = [code for code in LANGUAGES if code in found]
        self.occupations = sorted({o for v in self.versions.values() for o in v.attributes["profession"].unique()})

    def _load(self, name: str, images_ref) -> Version:
        bias_ref = parse_ref(f"{images_ref.repo_id}-bias")
        bias = self.store.resolve(bias_ref, "dataset")
        attributes_ref = lineage_of(bias)["inputs"]["input"]
        attributes = self.store.resolve(attributes_ref, "dataset")
        images_pinned = lineage_of(attributes)["inputs"]["input"]
        alignment = self.store.resolve(f"{images_ref.repo_id}-alignment", "dataset")
        configs = [p.name for p in (attributes / "data").iterdir() if p.name.endswith(f"_{VARIANT}")]
        return Version(
            name=name,
            images=self.store.resolve(images_pinned, "dataset"),
            images_ref=images_pinned,
            attributes=pd.concat([read_config(attributes, c) for c in configs], ignore_index=True),
            bias_summary=read_config(bias, "summary"),
            bias_per_occupation=read_config(bias, "per_occupation"),
            alignment=read_config(alignment, "summary"),
        )

    @functools.lru_cache(maxsize=256)
    def images(self, version: str, language: str, occupation: str, limit: int = 8) -> list[Image.Image]:
        folder = self.versions[version].images / "data" / f"{language}_{VARIANT}"
        out = []
        for shard in sorted(folder.glob("*.parquet")):
            table = pq.read_table(shard, columns=["profession", "image"], filters=[("profession", "=", occupation)])
            out += [Image.open(io.BytesIO(cell["bytes"])).convert("RGB") for cell in table.column("image").to_pylist()]
            if len(out) >= limit:
                break
        return out[:limit]

    def distribution(self, version: str, language: str, occupation: str, attribute: str) -> pd.DataFrame:
        """Share of each label among the images with exactly one face."""
        frame = self.versions[version].attributes
        rows = frame[(frame["language"] == language) & (frame["profession"] == occupation) & (frame["status"] == "ok")]
        shares = rows[attribute].value_counts(normalize=True)
        return pd.DataFrame({"label": shares.index.astype(str), "share": shares.values, "version": version})

    def metrics(self, version: str, language: str, occupation: str) -> dict[str, float | int | None]:
        v = self.versions[version]
        rows = v.attributes[(v.attributes["language"] == language) & (v.attributes["profession"] == occupation)]
        out: dict[str, float | int | None] = {
            "images": len(rows),
            "rejection_rate": float((rows["status"] != "ok").mean()) if len(rows) else None,
        }
        per = v.bias_per_occupation
        for attribute in ATTRIBUTES:
            match = per[
                (per["language"] == language) & (per["attribute"] == attribute) & (per["occupation"] == occupation)
            ]
            out[f"{attribute}_l1"] = float(match["l1"].iloc[0]) if len(match) else None
        summary = v.bias_summary
        gender = summary[(summary["language"] == language) & (summary["attribute"] == "gender")]
        out["gender_expected_max_unfairness"] = (
            float(gender["expected_max_unfairness"].iloc[0]) if len(gender) else None
        )
        align = v.alignment[(v.alignment["language"] == language) & (v.alignment["occupation"] == occupation)]
        for text in ("own_prompt", "occupation", "person"):
            out[f"clip_{text}"] = float(align[f"clip_{text}"].iloc[0]) if len(align) else None
        return out

    def leaderboard(self) -> pd.DataFrame:
        rows = []
        for name, v in self.versions.items():
            for language in self.languages:
                summary = v.bias_summary[v.bias_summary["language"] == language].set_index("attribute")
                if summary.empty:
                    continue
                align = v.alignment[(v.alignment["language"] == language) & (v.alignment["occupation"] == "__all__")]
                rows.append(
                    {
                        "language": LANGUAGES[language],
                        "version": name,
                        "gender L1": summary.loc["gender", "mean_l1"],
                        "race L1": summary.loc["race", "mean_l1"],
                        "age L1": summary.loc["age", "mean_l1"],
                        "gender max unfairness": summary.loc["gender", "expected_max_unfairness"],
                        "random reference": summary.loc["gender", "random_expected_max_unfairness"],
                        "CLIP own prompt": float(align["clip_own_prompt"].iloc[0]) if len(align) else None,
                        "CLIP occupation": float(align["clip_occupation"].iloc[0]) if len(align) else None,
                        "face rejection": summary.loc["gender", "rejection_rate"],
                    }
                )
        return pd.DataFrame(rows).round(4)


def parse_versions(text: str) -> dict[str, str]:
    """`base=ns/images-base-eval,finetuned=ns/images-finetuned-eval@v1` as a dict."""
    versions = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, spec = item.partition("=")
        if not name or not spec:
            raise ValueError(f"{VERSIONS_ENV}: {item!r} is not name=repo[@revision]")
        versions[name.strip()] = spec.strip()
    return versions


def load_study_from_env() -> Study:
    store = open_store()
    namespace = os.environ.get("T2I_BIAS_NAMESPACE", "t2i-bias")
    return Study(store, parse_versions(os.environ.get(VERSIONS_ENV, DEFAULT_VERSIONS)), namespace)
