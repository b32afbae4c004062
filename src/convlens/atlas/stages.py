"""The atlas's stages, registered in build order: one plain function each, taking the `Job` and
returning the record its pages need (kept in the stage's marker). Every figure comes from
`convlens.report.figures` or a `save_*` of `convlens.report.results`, as in the CLI."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator

import numpy as np
from torch.utils.data import Subset

from convlens import render
from convlens._progress import tqdm
from convlens.analysis.evolution import (
    checkpoint_label,
    evolution,
    evolution_projections,
    loaded_checkpoints,
)
from convlens.analysis.filters import conv_weight, dead_units
from convlens.analysis.invariance import invariance
from convlens.atlas import image_figures, unit_images
from convlens.atlas.site import Job
from convlens.data.select import is_labelled, one_per_class, take
from convlens.distributed import gather_objects, gather_shards
from convlens.embedding import embed, nearest_neighbours
from convlens.models.layers import conv_layers, receptive_field, rectified_output, trace_layers
from convlens.report import figures, write_image, write_png, write_pngs
from convlens.report.results import (
    layer_table,
    save_embedding,
    save_invariance,
    save_neighbours,
    save_synthesis,
    save_trust,
)
from convlens.scan import ScanResult, TopExamples, scan, top_examples_of
from convlens.synthesis import class_score, synthesize
from convlens.trust.assess import TRUST_METHODS, assess, label_targets
from convlens.trust.randomisation import layer_blocks

Stage = Callable[[Job], dict]
STAGES: dict[str, Stage] = {}
SKIPPABLE: list[str] = []
MAX_FILTER_TILES = 20000  # filter grids with more (output, input) tiles are left out
TSNE_MINIMUM = 90  # three times openTSNE's default perplexity of 30


def stage(name: str, *, skippable: bool = False) -> Callable[[Stage], Stage]:
    """Register the decorated function as stage `name` (stages run in registration order)."""

    def register(run: Stage) -> Stage:
        if name in STAGES:
            raise ValueError(f"stage {name!r} is registered twice")
        STAGES[name] = run
        if skippable:
            SKIPPABLE.append(name)
        return run

    return register


def merge_records(stage: str, records: list[dict]) -> dict:
    """One record from every rank's record of `stage` (in rank order): the image pages of all
    ranks in the one-process order, the unit image sizes and activation atlases of all layers,
    else rank 0's."""
    first = records[0]
    if stage == "images":
        return {"pages": _dealt_back([record["pages"] for record in records])}
    if stage in PER_LAYER:  # each rank made some layers': one dict of them all
        field = PER_LAYER[stage]
        return {**first, field: dict(_dealt_back([list(r[field].items()) for r in records]))}
    return first


PER_LAYER = {"synthesis": "sides", "activation-atlas": "layers"}
"""Stages split by layer between ranks, and the field of their record keyed by layer."""


def _dealt_back(shares: list[list]) -> list:
    """Undo `Job.mine`: item i of the whole went to rank i % world as its (i // world)-th."""
    world = len(shares)
    return [shares[i % world][i // world] for i in range(sum(map(len, shares)))]


def scan_result(job: Job) -> ScanResult:
    """The result the scan stage saved."""
    return ScanResult.load(job.site.out / "scan.safetensors")


def _count(result: ScanResult, layer: str) -> int:
    """The channels of `layer` in the scan."""
    return result[layer].values.shape[0]


@stage("summary")
def summary(job: Job) -> dict:
    """Layer table with dead units, accuracy, filter grids and the first layer's filters."""
    if job.rank != 0:
        return {}
    model = job.loaded.model
    stats = dead_units(model, job.data, job.layers)
    convs = conv_layers(model)
    weights = {layer: conv_weight(model, layer) for layer in convs}
    shown = {
        layer: w for layer, w in weights.items() if w.shape[0] * w.shape[1] <= MAX_FILTER_TILES
    }
    written = write_pngs(job.site.img, figures.filter_figures(shown))
    first = rectified_output(model, convs[0]) if convs else None  # its units get filter tiles
    if first not in job.layers or weights[convs[0]].shape[1] not in (1, 3):
        first = None
    else:
        tiles = render.minmax(weights[convs[0]].float().cpu(), dims=(1, 2, 3))
        for c, tile in enumerate(tiles):
            write_png(job.site.unit_image(first, c, "filter"), render.picture(tile, 48))
    return {
        "rows": layer_table(trace_layers(model, job.loaded.input_size), stats),
        "accuracy": stats.accuracy,  # from the dead-unit pass: one pass over the data, not two
        "filters": {layer: path.name for layer, path in zip(shown, written)},
        "layer_filters": {  # the layer page of each conv's rectified output shows its filters
            rectified_output(model, conv): {"conv": conv, "file": path.name}
            for conv, path in zip(shown, written)
        },
        "first_layer": first,
        "dead": {
            layer: [i for i, d in enumerate(s.dead.tolist()) if d] for layer, s in stats.items()
        },
    }


@stage("scan")
def scan_stage(job: Job) -> dict:
    """The top-9 dataset examples of every channel (resumable on its own)."""
    state = "scan-state.safetensors" if job.world == 1 else f"scan-state-{job.rank}.safetensors"
    result = scan(
        job.loaded.model,
        job.data,
        job.layers,
        checkpoint=job.site.out / state,
        shard=(job.rank, job.world),
        description={"model": job.loaded.spec, "data": job.config.data_description},
    )
    if job.world > 1:
        result = gather_shards(result, 9)
    if job.rank == 0:
        result.save(job.site.out / "scan.safetensors")
    return {"layers": job.layers}


@stage("units")
def units(job: Job) -> dict:
    """Per channel: Fig. 2 and its thumbnail (the patches); the whole source images, each
    dataset image written once a run. Several channels share one deconvnet pass (`unit_groups`);
    a resumed build skips the channels its ledger lists."""
    result, model, ledger = scan_result(job), job.loaded.model, job.ledger("units")
    fields = {layer: receptive_field(model, layer, job.loaded.input_size) for layer in job.layers}
    work = job.mine([(layer, c) for layer in job.layers for c in range(_count(result, layer))])
    left = [(layer, c) for layer, c in work if not ledger.finished(layer, c)]
    bar = job.bar(left, "top-9 images", done=len(work) - len(left))
    written: set[int] = set()  # dataset images written by this run: each once
    for layer, channels in unit_groups(bar, _channels_per_pass(job)):
        found = top_examples_of(model, job.data, result[layer], layer, channels, fields[layer])
        for c, examples in zip(channels, found):
            _unit_figures(job, layer, c, examples, written)
        ledger.record(layer, channels)
    return {"layers": job.layers}


PROJECTION_PIXELS = 32 * 224 * 224
"""Input pixels projected in one deconvnet pass of the units stage: 32 images of 224 pixels
(3 channels' top-9), all the channels of a 28-pixel layer."""


def _channels_per_pass(job: Job) -> int:
    height, width = job.loaded.input_size[-2:]
    return max(1, PROJECTION_PIXELS // (height * width) // 9)


def unit_groups(items: Iterable[tuple[str, int]], size: int) -> Iterator[tuple[str, list[int]]]:
    """(layer, channels) groups of at most `size` consecutive items of the same layer."""
    group: list[int] = []
    current = None
    for layer, channel in items:
        if group and (layer != current or len(group) == size):
            yield current, group
            group = []
        current = layer
        group.append(channel)
    if group:
        yield current, group


def _unit_figures(job: Job, layer: str, c: int, examples: TopExamples, written: set[int]) -> None:
    """Fig. 2 of one channel, its thumbnail (the patches), its top-1 patch, and its source
    images not yet `written` by this run (a file left by an atlas of other data or another
    model is replaced)."""
    figure = figures.top_examples_figure(examples)
    write_image(job.site.unit_image(layer, c, "top9"), figure)
    half = figure.shape[1] // 2
    write_image(job.site.unit_image(layer, c, "thumb"), figure[:, half:][::2, ::2])
    write_image(job.site.unit_image(layer, c, "top1"), figures.top_patch(examples))
    shown = job.loaded.transform.denormalize(examples.images)
    for index, image in zip(examples.indices, shown):
        if index not in written:
            write_image(job.site.data_image(index), figures.source_picture(image))
            written.add(index)


@stage("synthesis", skippable=True)
def synthesis(job: Job) -> dict:
    """A synthesised image per unit (`unit_images`: a layer's units together, in chunks that
    bound memory, after a printed time estimate) and class models."""
    result, ledger, layers = scan_result(job), job.ledger("synthesis"), job.mine(job.layers)
    work = [  # split by layer between ranks
        (layer, part)
        for layer in layers
        for part in unit_images.chunks(job, layer, _count(result, layer))
    ]
    left = [(layer, part) for layer, part in work if not ledger.all_finished(layer, part)]
    if job.progress and job.rank == 0 and left:
        per_layer = Counter(layer for layer, part in left for _ in part)  # units left
        tqdm.write(unit_images.announce(job, per_layer))
    for layer, part in job.bar(left, "unit image chunks", done=len(work) - len(left)):
        made = unit_images.layer_images(job, layer, part)
        for c, image in zip(part, made.images):
            write_image(job.site.unit_image(layer, c, "synthesis"), render.picture(image, 96))
        ledger.record(layer, part)
    unit = job.config.synthesis == "unit"
    sizes = {layer: unit_images.side(job, layer) for layer in layers} if unit else {}
    record = {"mode": job.config.synthesis, "sides": sizes}
    if job.rank == 0:
        classes = list(range(min(len(job.loaded.classes), 10)))
        models = synthesize(
            job.loaded, class_score(classes), preset="lucid", n=len(classes), fast=job.fast
        )
        suffix = job.site.figure_suffix
        record["classes"] = save_synthesis(models, job.site.img, "class-models", suffix).name
    return record


@stage("evolution", skippable=True)
def evolution_stage(job: Job) -> dict:
    """Each channel's strongest activation projected at every training checkpoint (Fig. 4)."""
    checkpoints = job.config.checkpoints
    if len(checkpoints) < 2:
        return {"note": "no training checkpoints were given (--checkpoints)"}
    final = (job.loaded.model, scan_result(job))  # the last checkpoint is usually this model
    evo = evolution(checkpoints, job.data, job.layers, [], spec=job.loaded.spec, known=final)
    models = [loaded.model for loaded in loaded_checkpoints(evo, job.loaded.spec)]
    fields = {
        layer: receptive_field(models[0], layer, job.loaded.input_size) for layer in job.layers
    }
    work = [
        (layer, c) for layer in job.layers for c in range(evo.results[0][layer].values.shape[0])
    ]
    for layer, c in job.bar(job.mine(work), "evolution strips"):
        cells = evolution_projections(evo, models, job.data, layer, c, fields[layer])
        write_png(job.site.unit_image(layer, c, "evolution"), figures.evolution_strip(cells))
    return {"labels": [checkpoint_label(c) for c in checkpoints]}


@stage("images")
def images(job: Job) -> dict:
    """A page per sample image (`image_figures.image_page`): prediction, attributions, maps and
    projections per layer, neuron groups, occlusion. The neuron groups' icons of every page are
    optimised together, after the pages."""
    indices = job.mine(one_per_class(job.data, job.config.images))
    made = [image_figures.image_page(job, i) for i in job.bar(indices, "image pages")]
    shares = gather_objects([(i, groups) for i, (_, groups) in zip(indices, made)])
    if job.rank == 0:  # every rank's groups, in the one-process order: the same icons
        image_figures.write_groups(job, _dealt_back(shares))
    return {"pages": [page for page, _ in made]}


@stage("embedding", skippable=True)
def embedding(job: Job) -> dict:
    """t-SNE mosaic and scatter of the CNN codes, and nearest neighbours of five images."""
    if job.rank != 0:
        return {}
    count = int(np.sqrt(min(job.config.embed, len(job.data)))) ** 2
    if count <= TSNE_MINIMUM:
        return {
            "note": f"t-SNE needs more than {TSNE_MINIMUM} images; the data has {len(job.data)}"
        }
    found = embed(job.loaded.model, job.data, count)
    save_embedding(found, job.site.img, tile=24)
    queries = Subset(job.data, one_per_class(job.data, 5))
    near = nearest_neighbours(job.loaded.model, queries, job.data, 6)
    save_neighbours(near, job.site.img, job.site.figure_suffix)
    return {"count": count}


@stage("invariance", skippable=True)
def invariance_stage(job: Job) -> dict:
    """Fig. 5 for translation, scaling and rotation at the first and last layer."""
    if job.rank != 0:
        return {}
    if not is_labelled(job.data):
        return {"note": "invariance needs labelled images"}
    images, labels = take(job.data, one_per_class(job.data, 5))
    layers = [job.layers[0], job.layers[-1]]
    plots = []
    for transform in ("translate", "scale", "rotate"):
        result = invariance(job.loaded.model, images, labels, layers, transform)
        plots.append(save_invariance(result, job.site.img).name)
    return {"plots": plots}


@stage("trust", skippable=True)
def trust_stage(job: Job) -> dict:
    """Sanity checks and faithfulness of the image pages' methods (`convlens trust`) on the
    first `trust_images` images, their labels (or predictions) as targets; the randomisation
    test re-initialises one block a step, the layers up to each of the atlas's layers
    (`layer_blocks`): 6 steps instead of 41 layers on resnet18."""
    if job.rank != 0:
        return {}
    count = min(job.config.trust_images, len(job.data))
    images, labels = take(job.data, list(range(count)))
    target = label_targets(job.loaded.model, images, labels)
    blocks = layer_blocks(job.loaded.model, job.layers)
    found = assess(
        job.loaded.model, images, target, TRUST_METHODS, blocks=blocks, progress=job.progress
    )
    save_trust(found, job.site.img / "trust")
    return {
        "images": count,
        "table": found.table(),
        "steps": found.randomisation.steps,
        "blocks": True,
    }
