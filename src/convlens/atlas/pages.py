"""The atlas's pages, one function per page kind, written from what the stages recorded."""

from __future__ import annotations

import shutil
from importlib import resources

from convlens.atlas.site import Job
from convlens.atlas.stages import STAGES, scan_result
from convlens.data.select import item
from convlens.report import write_page
from convlens.topk import TopK


def write_pages(job: Job) -> None:
    """Every page the finished stages allow, the stylesheet and script, and the index."""
    assets = job.site.out / "assets"
    assets.mkdir(parents=True, exist_ok=True)
    for name in ("style.css", "filter.js"):
        shutil.copyfile(resources.files("convlens.report") / "static" / name, assets / name)
    done = {name: _finished(job, name) for name in STAGES}
    if done["units"] is not None:
        result = scan_result(job)
        for layer in job.layers:
            layer_page(job, layer, result[layer], done)
            for c in range(result[layer].values.shape[0]):
                unit_page(job, layer, c, result[layer], done)
    for page in (done["images"] or {}).get("pages", []):
        image_page(job, page, done)
    if done["trust"]:
        write_page(
            job.site.out / "trust.html",
            "trust.html.j2",
            **_common(job, "trust.html"),
            trust=done["trust"],
        )
    index_page(job, done)


def _finished(job: Job, stage: str) -> dict | None:
    """The marker of `stage` when it finished with this build's settings, else None (a skipped
    stage's marker from an atlas of another model or data is not shown)."""
    marker = job.site.marker(stage)
    return marker if marker and marker.get("settings") == job.settings(stage) else None


def _common(job: Job, page: str) -> dict:
    """What every page shows, and `root`: the way back to the top that its links start with."""
    return {
        "model": job.loaded.spec,
        "data": job.config.data_description,
        "root": job.site.root(page),
        "ext": job.site.figure_suffix,
    }


def _dead(done: dict, layer: str) -> set[int]:
    return set(((done["summary"] or {}).get("dead") or {}).get(layer, []))


def layer_page(job: Job, layer: str, top: TopK, done: dict) -> None:
    """A tile per channel, with dead units faded, the filter box, and the activation atlas."""
    dead, site = _dead(done, layer), job.site
    channels = [
        {
            "c": c,
            "dead": c in dead,
            "page": site.unit_page(layer, c),
            "thumb": site.relative(site.unit_image(layer, c, "thumb")),
            "filter": site.relative(site.unit_image(layer, c, "filter")),
        }
        for c in range(top.values.shape[0])
    ]
    page = job.site.layer_page(layer)
    write_page(
        job.site.out / page,
        "layer.html.j2",
        **_common(job, page),
        layer=layer,
        channels=channels,
        first=layer == (done["summary"] or {}).get("first_layer"),
        filters=((done["summary"] or {}).get("layer_filters") or {}).get(layer),
        activation=((done["activation-atlas"] or {}).get("layers") or {}).get(layer),
        grid=(done["activation-atlas"] or {}).get("grid"),
    )


UNIT_KINDS = ("top9", "filter", "synthesis", "evolution")


def unit_page(job: Job, layer: str, c: int, top: TopK, done: dict) -> None:
    """Fig. 2, the source images, the activation table, the synthesised image, the evolution
    strip, the filter."""
    count, site = top.values.shape[0], job.site
    page = site.unit_page(layer, c)
    write_page(
        job.site.out / page,
        "unit.html.j2",
        **_common(job, page),
        layer=layer,
        layer_page=job.site.layer_page(layer),
        c=c,
        images={kind: site.relative(site.unit_image(layer, c, kind)) for kind in UNIT_KINDS},
        dead=c in _dead(done, layer),
        sources=_sources(job, top, c),
        synthesis=done["synthesis"],
        evolution=(done["evolution"] or {}).get("labels"),
        filter=site.unit_image(layer, c, "filter").exists(),
        previous=job.site.unit_page(layer, c - 1) if c > 0 else None,
        next=job.site.unit_page(layer, c + 1) if c + 1 < count else None,
    )


def _sources(job: Job, top: TopK, c: int) -> list[dict]:
    """The activation table of a unit: value, dataset index and label of each top image."""
    rows = []
    for value, index in zip(top.values[c].tolist(), top.indices[c].tolist()):
        if index >= 0:
            label = item(job.data, index)[1]
            name = job.loaded.card.class_name(label) if label >= 0 else ""
            picture = job.site.relative(job.site.data_image(index))
            rows.append({"value": round(value, 4), "index": index, "label": name, "image": picture})
    return rows


def image_page(job: Job, page: dict, done: dict) -> None:
    """Prediction, attributions (with the sanity check's verdict on each method), maps and
    projections per layer, occlusion."""
    verdicts = {row["map"]: row["passes"] for row in (done["trust"] or {}).get("table", [])}
    name = job.site.image_page(page["index"])
    layer, site = job.layers[-1], job.site
    channels = [
        {
            **unit,
            "page": site.unit_page(layer, unit["c"]) if done["units"] else None,
            "patch": site.relative(site.unit_image(layer, unit["c"], "top1"))
            if done["units"]
            else None,
            "synthesis": site.relative(site.unit_image(layer, unit["c"], "synthesis"))
            if done["synthesis"]
            else None,
        }
        for unit in page.get("channels", [])
    ]
    write_page(
        job.site.out / name,
        "image.html.j2",
        **_common(job, name),
        page=page,
        verdicts=verdicts,
        channels=channels,
        channel_layer=layer,
    )


def index_page(job: Job, done: dict) -> None:
    """Layer table, filters, sample images, class models, t-SNE, neighbours, invariance."""
    layers = [{"name": layer, "page": job.site.layer_page(layer)} for layer in job.layers]
    write_page(
        job.site.out / "index.html",
        "index.html.j2",
        **_common(job, "index.html"),
        summary=done["summary"] or {},
        layers=layers if done["units"] is not None else [],
        images=(done["images"] or {}).get("pages", []),
        done=done,
    )
