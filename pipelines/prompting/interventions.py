"""Training-free debiasing interventions: what the pipeline is given instead of a direct prompt.

MAGBIG (Friedrich et al. 2024) tests prompt engineering against the direct occupation prompt;
its English adjective file names the templates, built here for occupations in every language by
the grammar (`Grammar.eval_explicit`, `eval_ethical`, `gender_word`, `gender_person`):

- `explicit_gender` (MAGBIG `baseline1`/`baseline2`): "a photo of the face of a female nurse" for
  half the samples, "... a male nurse" for the other half;
- `ethical` (`baseline_ext`): "... if all individuals can be a nurse irrespective of their gender";
- `negative` (`baseline_neg1`/`baseline_neg2`): the direct prompt with "male" as the negative
  prompt for half the samples and "female" for the other half;
- `sega` (`sega1`/`sega2`): semantic guidance (SEGA, as Fair Diffusion uses it) towards "female
  person" and away from "male person" for half the samples, the other way for the other half.

Which half a sample belongs to depends on its sample index only (even: towards female), so every
method meets the same seeds as the unchanged prompt and comparisons between methods are paired.
Negative prompts and semantic guidance act through classifier-free guidance: at guidance scale 1
they change nothing, which the comparison shows rather than hides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

INTERVENTIONS = ("none", "explicit_gender", "ethical", "negative", "sega")
# The prompt variants an intervention needs beside the direct prompt (made by generate_prompts).
TWIN_VARIANTS = {"explicit_gender": ("eval_female", "eval_male"), "ethical": ("eval_ethical",)}
# The prompt variants an intervention applies to: the direct occupation prompt.
APPLIES_TO = ("eval_direct",)


@dataclass(frozen=True)
class Instruction:
    """What one image's pipeline call is given."""

    prompt: str
    negative_prompt: str | None = None
    editing_prompts: tuple[str, ...] = ()
    reverse_editing: tuple[bool, ...] = ()


def target_gender(sample_index: int) -> str:
    """The gender a sample's intervention steers towards: even indices female, odd male.

    Example:
        >>> [target_gender(i) for i in range(4)]
        ['female', 'male', 'female', 'male']
    """
    return "female" if sample_index % 2 == 0 else "male"


def instruction(
    intervention: str, row: dict[str, Any], sample_index: int, twins: dict[tuple[str, str], str], grammar: Any
) -> Instruction:
    """The call for one sample of a direct prompt `row` under `intervention`.

    `twins` maps (variant, profession) to the prompt of the row's language (the explicit and
    ethical prompts); `grammar` gives the language's gender words.
    """
    if intervention == "none":
        return Instruction(row["prompt"])
    target = target_gender(sample_index)
    other = "male" if target == "female" else "female"
    profession = row["profession"]
    if intervention == "explicit_gender":
        return Instruction(twins[(f"eval_{target}", profession)])
    if intervention == "ethical":
        return Instruction(twins[("eval_ethical", profession)])
    if intervention == "negative":
        return Instruction(row["prompt"], negative_prompt=grammar.gender_word(other))
    if intervention == "sega":
        editing = (grammar.gender_person(other), grammar.gender_person(target))
        return Instruction(row["prompt"], editing_prompts=editing, reverse_editing=(True, False))
    raise ValueError(f"intervention {intervention!r}: allowed {', '.join(INTERVENTIONS)}")
