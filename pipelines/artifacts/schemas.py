"""Every dataset the study publishes: its kind, its columns (`datasets.Features`) and its configs.

A dataset's kind follows from the stage that made it (its card's lineage), so a stage can say
"an images dataset was given where an attributes dataset is expected" instead of failing on a
missing column. Configs of images, attributes and alignment datasets hold one language and one
prompt variant each; the card records both (`config_info`), so no stage parses a config's name.
"""

from __future__ import annotations

import datasets

# The prompt grid's slots: `<STYLE> photo of a <AGE> <GENDER> <PROFESSION> <DRESSING> <PLACE>`.
GRID_COLUMNS = ("style", "age", "gender", "profession", "dressing", "place")

# Which stage makes which kind of dataset.
KIND_OF_STAGE = {
    "generate_prompts": "prompts",
    "translate_prompts": "prompts",
    "import_magbig": "prompts",
    "generate_images": "images",
    "draw_world": "images",
    "collect_datasets": "training",
    "classify": "attributes",
    "evaluate_bias": "bias",
    "evaluate_alignment": "alignment",
    "compare_methods": "methods",
    "check_world": "calibration",
}
MAKER_OF_KIND = {
    "prompts": "generate_prompts, translate_prompts or import_magbig",
    "images": "generate_images or draw_world",
    "training": "collect_datasets",
    "attributes": "classify",
    "bias": "evaluate_bias",
    "alignment": "evaluate_alignment",
    "methods": "compare_methods",
    "calibration": "check_world",
}


def _strings(*names: str) -> dict[str, datasets.Value]:
    return {name: datasets.Value("string") for name in names}


PROMPTS = datasets.Features(
    {
        **_strings("prompt_id", "variant", "language", "prompt"),
        **_strings(*GRID_COLUMNS),
    }
)

IMAGES = datasets.Features(
    {
        "image": datasets.Image(),
        **_strings("prompt_id", "prompt", "language", "variant"),
        "sample_index": datasets.Value("int32"),
        "seed": datasets.Value("int64"),
        **_strings("model", "model_revision", "scheduler"),
        "num_inference_steps": datasets.Value("int32"),
        "guidance_scale": datasets.Value("float32"),
        "height": datasets.Value("int32"),
        "width": datasets.Value("int32"),
        "rejected": datasets.Value("int32"),
        "face_check": datasets.Value("string"),
        # True where the model's own safety checker blacked the image out (None: it was not run).
        "safety_flagged": datasets.Value("bool"),
        # What was given to the pipeline when an intervention changed it (see generate_images).
        **_strings("intervention", "generation_prompt", "negative_prompt"),
        "editing_prompts": datasets.List(datasets.Value("string")),
        "seconds": datasets.Value("float32"),
        **_strings(*GRID_COLUMNS),
    }
)

TRAINING = datasets.Features(
    {
        "image": datasets.Image(),
        **_strings("text", "prompt_id", "caption_language", "caption_variant", "image_config", "image_prompt"),
        "sample_index": datasets.Value("int32"),
        "seed": datasets.Value("int64"),
        **_strings("profession", "gender", "image_gender"),
    }
)

STATUSES = ("ok", "no_face", "multiple_faces", "corrupt")
ATTRIBUTES = datasets.Features(
    {
        **_strings("prompt_id", "language", "variant", "intervention", "profession", "prompt_gender"),
        "sample_index": datasets.Value("int32"),
        "seed": datasets.Value("int64"),
        **_strings("model", "model_revision", "status"),
        "num_faces": datasets.Value("int32"),
        "face_box": datasets.List(datasets.Value("float32")),
        "face_score": datasets.Value("float32"),
        "gender": datasets.Value("string"),
        "gender_scores": datasets.List(datasets.Value("float32")),
        "race": datasets.Value("string"),
        "race4": datasets.Value("string"),
        "race_scores": datasets.List(datasets.Value("float32")),
        "race4_scores": datasets.List(datasets.Value("float32")),
        "age": datasets.Value("string"),
        "age_scores": datasets.List(datasets.Value("float32")),
        **_strings("detector", "classifier"),
    }
)

# One row per language, variant, model and perceived attribute.
BIAS_METRICS = (
    "mean_l1",
    "std_l1",
    "mean_l1_ci_low",
    "mean_l1_ci_high",
    "mean_l2",
    "std_l2",
    "mean_l2_ci_low",
    "mean_l2_ci_high",
    "exp_max_l1",
    "exp_max_l1_std",
    "exp_max_l2",
    "exp_max_l2_std",
    "random_exp_max_l1",
    "random_exp_max_l1_std",
    "random_exp_max_l2",
    "random_exp_max_l2_std",
    # Comparable across sample sizes: raw L1's sampling floor, and the distance from the target
    # (root mean unbiased squared L2, with the interval of it and of its square).
    "mean_l1_floor",
    "distance",
    "distance_ci_low",
    "distance_ci_high",
    "distance_sq",
    "distance_sq_ci_low",
    "distance_sq_ci_high",
)
REFERENCE_METRICS = tuple(
    f"{name}{end}" for name in ("amplification", "logit_amplification") for end in ("", "_ci_low", "_ci_high")
) + ("pearson", "pearson_p", "spearman", "spearman_p")
BIAS_SUMMARY = datasets.Features(
    {
        **_strings("language", "variant", "intervention", "model", "model_revision", "attribute"),
        "num_images": datasets.Value("int32"),
        "num_classified": datasets.Value("int32"),
        "rejection_rate": datasets.Value("float64"),
        "num_occupations": datasets.Value("int32"),
        "excluded_occupations": datasets.List(datasets.Value("string")),
        "labels": datasets.List(datasets.Value("string")),
        "outside_labels": datasets.List(datasets.Value("string")),
        "outside_share": datasets.Value("float64"),
        **{name: datasets.Value("float64") for name in BIAS_METRICS},
        "target": datasets.List(datasets.Value("float64")),
        # The share of classified images whose top score is below 0.8 (None: no scores).
        "low_confidence_share": datasets.Value("float64"),
        # Against a reference share per occupation (None without one): amplification, correlations.
        "reference_label": datasets.Value("string"),
        "reference_occupations": datasets.Value("int32"),
        **{name: datasets.Value("float64") for name in REFERENCE_METRICS},
        "k": datasets.Value("int32"),
        "n": datasets.Value("int32"),
        "rounds": datasets.Value("int32"),
    }
)
BIAS_PER_OCCUPATION = datasets.Features(
    {
        **_strings("language", "variant", "intervention", "model", "attribute", "occupation"),
        "n": datasets.Value("int32"),
        "labels": datasets.List(datasets.Value("string")),
        "counts": datasets.List(datasets.Value("int64")),
        "distribution": datasets.List(datasets.Value("float64")),
        "distribution_ci_low": datasets.List(datasets.Value("float64")),
        "distribution_ci_high": datasets.List(datasets.Value("float64")),
        "outside": datasets.Value("int64"),
        "l1": datasets.Value("float64"),
        "l2": datasets.Value("float64"),
        "l1_floor": datasets.Value("float64"),
        "target": datasets.List(datasets.Value("float64")),
        "distance_sq": datasets.Value("float64"),
        "distance_sq_floor": datasets.Value("float64"),
        "reference_share": datasets.Value("float64"),
    }
)
# The metrics as a noisier classifier would give them: per kind of misclassification and rate.
BIAS_NOISE = datasets.Features(
    {
        **_strings("language", "variant", "intervention", "model", "attribute", "kind"),
        **{name: datasets.Value("float64") for name in ("rate", "mean_l1", "distance", "distance_sq", "slope")},
        **{f"{name}_ratio": datasets.Value("float64") for name in ("mean_l1", "distance", "slope")},
    }
)

# CLIP scores: the English texts with the English CLIP, for every language's images (the
# reference study's protocol); the own prompt with the multilingual CLIP, a separate figure on
# its own scale.
ENGLISH_TEXTS = ("en_indirect", "en_occupation", "en_person")
ALIGNMENT_SCORES = ("clip_en_indirect", "clip_en_occupation", "clip_en_person", "mclip_own_prompt")
ALIGNMENT = datasets.Features(
    {
        **_strings("prompt_id", "language", "variant", "intervention", "profession", "model", "prompt"),
        "sample_index": datasets.Value("int32"),
        **{name: datasets.Value("float64") for name in ALIGNMENT_SCORES},
        "status": datasets.Value("string"),
    }
)
ALIGNMENT_SUMMARY = datasets.Features(
    {
        **_strings("language", "variant", "intervention", "model", "occupation"),
        "num_images": datasets.Value("int32"),
        **{name: datasets.Value("float64") for name in ALIGNMENT_SCORES},
        **{f"{name}_std": datasets.Value("float64") for name in ALIGNMENT_SCORES},
    }
)
# One row per method (a model's images at one guidance scale, with one intervention), language and
# prompt variant: its bias, what it costs, and a paired test against the baseline method.
METHODS = datasets.Features(
    {
        **_strings("method", "label", "intervention", "model", "language", "variant", "attribute"),
        "guidance_scale": datasets.Value("float64"),
        "num_occupations": datasets.Value("int32"),
        **{name: datasets.Value("float64") for name in ("mean_l1", "mean_l1_ci_low", "mean_l1_ci_high")},
        **{name: datasets.Value("float64") for name in ("exp_max_l1", "random_exp_max_l1", "l1_floor")},
        **{name: datasets.Value("float64") for name in ("distance", "distance_ci_low", "distance_ci_high")},
        "images_per_occupation": datasets.Value("float64"),
        # all (no training for the method); in-sample or held-out: occupations and languages its
        # training data had, or not.
        "split": datasets.Value("string"),
        # A method trained with several seeds: their number and the range of their distances.
        "seeds": datasets.Value("int32"),
        "seed_distance_low": datasets.Value("float64"),
        "seed_distance_high": datasets.Value("float64"),
        # The slope of measured on planted share (the planted-bias world only).
        **{
            name: datasets.Value("float64")
            for name in ("amplification", "amplification_ci_low", "amplification_ci_high")
        },
        # False where explicit-gender control is below the threshold: no test, no ranking.
        "measurable": datasets.Value("bool"),
        "baseline": datasets.Value("string"),
        **{f"difference_{name}": datasets.Value("float64") for name in ("mean", "ci_low", "ci_high")},
        "p_value": datasets.Value("float64"),
        "p_holm": datasets.Value("float64"),
        "clip_score": datasets.Value("float64"),
        # Fidelity: the share of images with exactly one classified face (figure), and the mean
        # similarity to the baseline's image from the same prompt and seed.
        "valid_share": datasets.Value("float64"),
        "same_noise_similarity": datasets.Value("float64"),
        # Costs as work: UNet evaluations per image, images seen in training for the method.
        "unet_passes_per_image": datasets.Value("float64"),
        "training_images": datasets.Value("int64"),
        "explicit_gender_control": datasets.Value("float64"),
        "explicit_gender_control_ci_low": datasets.Value("float64"),
        "explicit_gender_control_ci_high": datasets.Value("float64"),
        "explicit_gender_images": datasets.Value("int32"),
    }
)
# Pooled comparisons of two methods on the same prompts: every (language, occupation) cell both
# measured, the mean difference of their squared distances from the target (method - versus).
METHOD_COMPARISONS = datasets.Features(
    {
        **_strings("variant", "method", "versus", "attribute"),
        "cells": datasets.Value("int32"),
        **{f"difference_{name}": datasets.Value("float64") for name in ("mean", "ci_low", "ci_high")},
        "p_value": datasets.Value("float64"),
        "p_holm": datasets.Value("float64"),
        # A method trained with several seeds: how many seeds alone are fairer (p < 0.05).
        "seeds": datasets.Value("int32"),
        "seeds_better": datasets.Value("int32"),
    }
)
# The planted-bias world's verdict (check_world): one row per (language, occupation) cell, and one
# per model (planted, base, debiased).
WORLD_CELLS = datasets.Features(
    {
        **_strings("language", "profession"),
        "planted_share": datasets.Value("float64"),
        **{
            f"{model}_{name}": datasets.Value("float64")
            for model in ("base", "debiased")
            for name in ("share", "ci_low", "ci_high")
        },
        "base_images": datasets.Value("int32"),
        "debiased_images": datasets.Value("int32"),
        "within": datasets.Value("bool"),
    }
)
# Distances are root mean squares over cells of (share - target), corrected for sampling; `error` the
# same from the planted shares; `fit_*` the goodness-of-fit test of the counts against them.
WORLD_SUMMARY = datasets.Features(
    {
        "model": datasets.Value("string"),
        **{
            name: datasets.Value("float64")
            for name in (
                "distance",
                "distance_ci_low",
                "distance_ci_high",
                "distance_sq",
                "error",
                "error_ci_high",
                "mean_abs_error",
                "cells_within",
                "correlation",
                "slope",
                "slope_ci_low",
                "slope_ci_high",
                "fit_statistic",
                "fit_p_value",
                "control",
                "control_ci_low",
                "control_ci_high",
            )  # fmt: skip
        },
        **{name: datasets.Value("int32") for name in ("control_images", "cells", "images")},
    }
)
WORLD_VERDICTS = datasets.Features(
    {"verdict": datasets.Value("string"), "passed": datasets.Value("bool"), "line": datasets.Value("string")}
)
ALL_OCCUPATIONS = "__all__"


def config_name(language: str, variant: str, intervention: str = "none") -> str:
    """The config of one language, prompt variant and intervention in images, attributes and
    alignment datasets (the card's `config_info` holds the three, so nothing parses the name).

    Example:
        >>> config_name("de", "eval_direct"), config_name("de", "eval_direct", "ethical")
        ('de_eval_direct', 'de_eval_direct-ethical')
    """
    return f"{language}_{variant}" + ("" if intervention in (None, "none") else f"-{intervention}")
