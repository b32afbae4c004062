"""Everything `convlens trust` reports, computed in one call: the cascading model randomisation
test of each method, and the faithfulness of each method and of each reference map (deletion,
insertion, Average Drop, Increase in Confidence)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from convlens._shown import Shown
from convlens.attribution.methods import method_function
from convlens.hooks import model_device
from convlens.targets import Target
from convlens.trust.faithfulness import Curve, SoftMask, faithfulness, soft_mask
from convlens.trust.randomisation import Randomisation, check_blocks, randomisation_test
from convlens.trust.reference import reference_maps

TRUST_METHODS = ("gradient", "saliency", "deconvnet", "guided", "gradcam", "guided-gradcam", "ig")
"""The methods `convlens trust` checks by default."""


@dataclass(frozen=True)
class Trust(Shown):
    """`randomisation` of the methods; per method and per reference map (random, edges,
    centre): `deletion`, `insertion` and `soft_mask` scores."""

    methods: list[str]
    references: list[str]
    randomisation: Randomisation
    deletion: dict[str, Curve]
    insertion: dict[str, Curve]
    soft_mask: dict[str, SoftMask]

    def table(self) -> list[dict]:
        """One row per method and reference: every summary number, and the sanity check's
        verdict (None for the references, which do not look at the model)."""
        rows = []
        for name in [*self.methods, *self.references]:
            checked = name in self.methods
            rows.append(
                {
                    "map": name,
                    "randomisation": self.randomisation.score[name] if checked else None,
                    "baseline": self.randomisation.baseline[name]["spearman_abs"]
                    if checked
                    else None,
                    "passes": self.randomisation.passed[name] if checked else None,
                    "deletion_auc": float(self.deletion[name].auc.mean()),
                    "insertion_auc": float(self.insertion[name].auc.mean()),
                    "average_drop": self.soft_mask[name].average_drop,
                    "increase_in_confidence": self.soft_mask[name].increase_in_confidence,
                }
            )
        return rows


def label_targets(model: nn.Module, images: torch.Tensor, labels: Sequence[int]) -> Target:
    """The images' labels as targets, or the model's predictions when any image is unlabelled
    (label -1)."""
    if all(label >= 0 for label in labels):
        return list(labels)
    with torch.no_grad():
        return model(images.to(model_device(model))).argmax(1).cpu()


def assess(
    model: nn.Module,
    images: torch.Tensor,
    target: Target,
    methods: Sequence[str] = TRUST_METHODS,
    *,
    steps: int = 32,
    seed: int = 0,
    blocks: Mapping[str, Sequence[str]] | None = None,
    progress: bool = False,
) -> Trust:
    """The sanity check and the faithfulness scores of `methods` on `images`, with the reference
    maps beside them (deletion to a zero baseline, insertion into a blurred copy, `steps` each);
    `blocks`: the randomisation test's steps (`layer_blocks`; None: one layer a step);
    `progress`: bars over the faithfulness batches and the randomisation steps.

    Example:
        >>> found = assess(loaded.model, images, labels)  # doctest: +SKIP
        >>> found.table()[0]["passes"]  # doctest: +SKIP
    """
    methods = list(methods)
    check_blocks(model, blocks)
    maps = {name: method_function(name)(model, images, target) for name in methods}
    references = reference_maps(images, seed)
    maps |= references
    curves = faithfulness(model, images, target, maps, steps, progress=progress)
    randomised = randomisation_test(
        model, images, target, methods, seed=seed, blocks=blocks, progress=progress
    )
    return Trust(
        methods=methods,
        references=list(references),
        randomisation=randomised,
        deletion=curves["deletion"],
        insertion=curves["insertion"],
        soft_mask={n: soft_mask(model, images, target, m) for n, m in maps.items()},
    )
