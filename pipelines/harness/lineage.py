"""Finding artifacts by lineage, never by name: what was made from what.

Every revision records the stage that made it and its pinned inputs (`lineage`), in its card and
in the store's history. So "the bias results of these images" is the `evaluate_bias` revision whose
input is the `classify` revision whose input is these images, wherever each was published.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pipelines.artifacts.store import Store, card_metadata, parse_ref
from pipelines.errors import ConfigError, DataError, UserError


def evaluated_images(results: Iterable[Any]) -> dict[str, str]:
    """`{label: images ref}` of the images datasets whose bias a run measured (through classify).

    The label is the name of the model that made the images (its repo name, or the images repo's).
    """
    results = list(results)
    by_ref = {f"{r.repo_id}@{r.revision}": r for r in results}
    found: dict[str, str] = {}
    for result in results:
        if result.lineage.get("stage") != "evaluate_bias":
            continue
        attributes = by_ref.get(result.lineage.get("inputs", {}).get("input", ""))
        if attributes is None:
            continue
        images = attributes.lineage.get("inputs", {}).get("input")
        if not images:
            continue
        made = by_ref.get(images)
        model = made.lineage.get("inputs", {}).get("model", "") if made is not None else ""
        try:
            label = parse_ref(model).repo_id.split("/")[-1]
        except UserError:  # a folder or a Hub download: name the version by its images
            label = parse_ref(images).repo_id.split("/")[-1]
        found[label] = images
    return found


def derived(store: Store, namespace: str, source: str, stage: str, input_name: str = "input") -> list[str]:
    """Every `ns/name@revision` in `namespace` that `stage` made from `source` (a pinned ref), newest first."""
    return _made_by(store, namespace, stage, lambda inputs: inputs.get(input_name) == source)


def derived_from_any(store: Store, namespace: str, sources: set[str], stage: str) -> list[str]:
    """Every revision `stage` made with any of `sources` among its inputs (a comparison of several
    versions), newest first."""
    return _made_by(store, namespace, stage, lambda inputs: bool(sources & set(inputs.values())))


def _made_by(store: Store, namespace: str, stage: str, chosen: Any) -> list[str]:
    found = []
    for repo_id in store.repos(namespace, "dataset"):
        for entry in store.history(repo_id, "dataset"):
            lineage = entry.lineage or {}
            if lineage.get("stage") == stage and chosen(lineage.get("inputs") or {}):
                found.append((entry.created_at, f"{repo_id}@{entry.revision}"))
    return [ref for _, ref in sorted(found, reverse=True)]


def planted_shares(store: Store, ref: str, what: str, who: str) -> dict[tuple[str, str], float]:
    """`{(language, occupation): female share}` that the planted-bias world's card records
    (`draw_world`'s `planted_shares`), found upstream of `ref` (input `what`). `who` ends the error
    when there is none ("check_world judges"): only images of a planted-bias world have them."""
    found = upstream_metadata(store, ref, "planted_shares")
    if not found:
        raise DataError(f"{what}: nothing upstream of {ref} records planted shares (draw_world's card does); "
                        f"{who} only images of a planted-bias world")  # fmt: skip
    tables = {}
    for source, entries in found:
        try:
            tables[source] = {(e["language"], e["profession"]): float(e["share"]) for e in entries}
        except (TypeError, KeyError, ValueError):
            raise DataError(f"{source}: its card's planted_shares are not [{{language, profession, share}}]") from None
        if not all(0 <= share <= 1 for share in tables[source].values()):
            raise DataError(f"{source}: its card's planted shares must lie between 0 and 1")
    if len({tuple(sorted(t.items())) for t in tables.values()}) > 1:
        raise DataError(f"{what}: its lineage holds worlds with different planted shares: {', '.join(tables)}")
    return next(iter(tables.values()))


def upstream_metadata(store: Store, ref: str, key: str) -> list[tuple[str, Any]]:
    """`[(ref, value)]` of every artifact upstream of `ref` (itself included) whose card metadata
    holds `key`, nearest first: "the planted shares recorded by the world these attributes came
    from", through images, model and training set, whatever the steps between.

    Inputs that are not store revisions (Hub ids, files by hash) end their branch.
    """
    found, seen, queue = [], set(), [ref]
    while queue:
        spec = queue.pop(0)
        if spec in seen:
            continue
        seen.add(spec)
        folder = None
        for repo_type in ("dataset", "model"):
            try:
                folder = store.resolve(parse_ref(spec), repo_type)
                break
            except UserError:
                continue
        if folder is None:
            continue
        metadata = card_metadata(folder)
        if key in metadata:
            found.append((spec, metadata[key]))
        lineage = metadata.get("lineage") if isinstance(metadata.get("lineage"), dict) else {}
        inputs = lineage.get("inputs") if isinstance(lineage.get("inputs"), dict) else {}
        queue += [value for value in inputs.values() if isinstance(value, str) and "@" in value]
    return found


def parse_versions(text: str, what: str = "versions") -> dict[str, str]:
    """Model versions to compare, `label=ns/images[@rev],...`, as `{label: images}`.

    Example:
        >>> parse_versions("base=study/images-base, finetuned=images-ft@v1")
        {'base': 'study/images-base', 'finetuned': 'images-ft@v1'}
    """
    versions: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in str(text).split(","))):
        label, _, spec = item.partition("=")
        if not label.strip() or not spec.strip():
            raise ConfigError(f"{what}: {item!r} is not label=ns/images[@revision]")
        if label.strip() in versions:
            raise ConfigError(f"{what}: the label {label.strip()!r} is given twice")
        versions[label.strip()] = spec.strip()
    if not versions:
        raise ConfigError(f"{what}: no model version given (label=ns/images[@revision],...)")
    return versions


def version_refs(store: Store, namespace: str, label: str, spec: str) -> dict[str, str]:
    """A model version's pinned artifacts, found by lineage from its images: `images`, `attributes`
    (classify), `bias` (evaluate_bias) and, when measured, `alignment` (evaluate_alignment)."""
    ref = parse_ref(spec, namespace=namespace)
    if not store.exists(ref.repo_id, "dataset"):
        raise DataError(f"version {label!r}: no images dataset {ref.repo_id} in the store")
    images = f"{ref.repo_id}@{store.revision_of(ref, 'dataset')}"
    owner = ref.repo_id.split("/")[0]
    attributes = derived(store, owner, images, "classify")
    if not attributes:
        raise DataError(f"version {label!r}: no attributes made by classify from {images}")
    bias = derived(store, owner, attributes[0], "evaluate_bias")
    if not bias:
        raise DataError(f"version {label!r}: no bias results made by evaluate_bias from {attributes[0]}")
    refs = {"images": images, "attributes": attributes[0], "bias": bias[0]}
    alignment = derived(store, owner, images, "evaluate_alignment")
    if alignment:
        refs["alignment"] = alignment[0]
    return refs
