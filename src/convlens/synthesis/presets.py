"""Named synthesis recipes, each reproducing the settings of its source.

Units: Yosinski et al. ran Caffe on mean-subtracted 0-255 pixels; their learning rates are in
those units and are converted to the model's input space (`Preset.pixel_units`). Blur radii are
in pixels, decay and percentiles are unit-free.
"""

from __future__ import annotations

from dataclasses import dataclass

Step = tuple[str, object]  # one transform: ("pad", 12), ("jitter", 8), ("scale", (...)), ...


@dataclass(frozen=True)
class Preset:
    """Everything that defines a synthesis run except the model, objective and seed."""

    name: str
    source: str
    parameterization: str = "pixels"  # "pixels" | "fourier"
    init_std: float = (
        0.0  # pixel start: Gaussian noise of this std in 0-255 units (0: the mean image)
    )
    optimizer: str = "ascent"  # "ascent" (plain gradient ascent) | "adam"
    lr: float = 1.0
    lr_policy: str = (
        "constant"  # "constant" | "progress" (Yosinski: lr = desired / |g|^2, capped at lr)
    )
    desired_progress: float = 0.0
    pixel_units: bool = False  # lr given in 0-255 pixel units (Caffe), converted to input space
    steps: int = 200
    l2: float = 0.0  # lambda of Simonyan's lambda * ||I||^2 (input space)
    tv: float = 0.0  # weight of the total variation
    decay: float = 0.0  # Yosinski: I <- (1 - decay) * I after every step
    blur_radius: float = 0.0  # Yosinski: Gaussian blur of this sigma (pixels) ...
    blur_every: int = 0  # ... every this many steps
    norm_percentile: float = 0.0  # Yosinski: zero pixels whose norm is below this percentile
    contribution_percentile: float = 0.0  # Yosinski: zero pixels of small |contribution|
    transforms: tuple[Step, ...] = ()

    def describe(self) -> str:
        """A one-line summary of the non-default settings, for logs and captions."""
        defaults = Preset(self.name, self.source)
        changed = [
            f"{key}={value}"
            for key, value in vars(self).items()
            if key not in ("name", "source") and value != getattr(defaults, key)
        ]
        return f"{self.name}: {', '.join(changed)}"


def _yosinski(row: int, **settings: object) -> Preset:
    return Preset(
        name=f"yosinski-{row}",
        source=f"Yosinski et al. 2015, Table 1 row {row} (deep-visualization-toolbox flags); "
        "start: mean image + N(0, 1) noise in 0-255 units; order per step: gradient step, "
        "decay, blur, small-norm clipping, small-contribution clipping",
        init_std=1.0,
        pixel_units=True,
        **settings,
    )


LUCID_TRANSFORMS: tuple[Step, ...] = (
    ("pad", 12),
    ("jitter", 8),
    ("scale", tuple(1 + (i - 5) / 50 for i in range(11))),
    ("rotate", (*range(-10, 11), 0, 0, 0, 0, 0)),
    ("jitter", 4),
)
DISTILL_TRANSFORMS: tuple[Step, ...] = (
    ("pad", 16),
    ("jitter", 16),
    ("scale", (1.0, 0.975, 1.025, 0.95, 1.05)),
    ("rotate", (-5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5)),
    ("jitter", 8),
)

PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            name="simonyan",
            source="Simonyan et al. 2014, section 2: argmax_I S_c(I) - lambda ||I||^2 by plain "
            "gradient ascent from the zero (mean) image; the paper gives no lambda, step or step "
            "count: lambda 1e-3 as in cs231n's class-visualisation exercise, step 1, 200 steps",
            lr=1.0,
            steps=200,
            l2=1e-3,
        ),
        _yosinski(
            1,
            decay=0.0,
            blur_radius=0.5,
            blur_every=4,
            norm_percentile=50,
            steps=500,
            lr_policy="progress",
            lr=100.0,
            desired_progress=2.0,
        ),
        _yosinski(2, decay=0.3, norm_percentile=20, steps=750, lr=100.0),
        _yosinski(3, decay=0.0001, blur_radius=1.0, blur_every=4, steps=1000, lr=100.0),
        _yosinski(
            4,
            decay=0.0,
            blur_radius=0.5,
            blur_every=4,
            contribution_percentile=90,
            steps=1000,
            lr_policy="progress",
            lr=1e8,
            desired_progress=2.0,
        ),
        Preset(
            name="lucid",
            source="Lucid / Lucent render_vis defaults: 512 steps of Adam (lr 0.05) on a Fourier "
            "image (sd 0.01, decay power 1) with decorrelated colour and a sigmoid, through the "
            "standard transforms: pad 12 (grey), jitter 8, scale 0.9-1.1, rotate -10..10 degrees "
            "(black corners), jitter 4",
            parameterization="fourier",
            optimizer="adam",
            lr=0.05,
            steps=512,
            transforms=LUCID_TRANSFORMS,
        ),
        Preset(
            name="distill",
            source="Olah, Mordvintsev & Schubert 2017, Feature Visualization (Distill): 2560 steps "
            "of Adam (lr 0.05) on a decorrelated Fourier image, with transformation robustness: "
            "pad 16, jitter 16, scale 0.95-1.05, rotate -5..5 degrees, jitter 8 (values as in "
            "independent reimplementations, one attributing them to the article; its own text was "
            "not at hand)",
            parameterization="fourier",
            optimizer="adam",
            lr=0.05,
            steps=2560,
            transforms=DISTILL_TRANSFORMS,
        ),
    )
}
