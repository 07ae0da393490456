"""Run the pipeline on one movie: stages wired to the reader, the store and Dask.

Stages, in order (each one's result is in the store when it ends, so a killed run
resumes at the first unfinished stage):

=============  ==============================================  =====================
stage          what it does                                    writes
=============  ==============================================  =====================
segment        Cellpose per frame (Dask tasks)                 labels/segmentation
track_cells    stable cell ids across frames                   labels/cells
detect         particles per frame (Dask tasks)                tables/detections
link           particle tracks                                 tables/particles
zones          distance to membrane, cell, zone (Dask tasks)   tables/particles
classify       states over time, events, track table           particles, events, tracks
kinetics       per-cell time series and rates                  kinetics, cells, movie
export         GEFF graph of the tracks                        tracks.geff
=============  ==============================================  =====================
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import __version__, store
from pipeline.celltrack import CellTracker, relabel
from pipeline.classify import classify_tracks, summarize_tracks
from pipeline.compute import dask_client, frame_chunks, map_tasks
from pipeline.config import RunConfig, dump_config
from pipeline.curation import curation_versions
from pipeline.detect import DetectParams, detect_frame
from pipeline.errors import InputError
from pipeline.io import Movie, file_checksum, open_movie
from pipeline.kinetics import cell_kinetics, cell_rates
from pipeline.link import link_tracks
from pipeline.segment import SegmentParams, estimate_diameter_um, segment_frame
from pipeline.zones import ZoneParams, cell_geometry, zones_for_frame

log = logging.getLogger(__name__)

STAGES = ("segment", "track_cells", "detect", "link", "zones", "classify", "kinetics", "export")


@dataclass(frozen=True)
class MovieSpec:
    """How to open the movie, in a form that travels to Dask workers."""

    path: str
    pixel_size_um: float | None
    frame_interval_s: float | None
    axes: str | None

    def open(self) -> Movie:
        return _open_cached(self)


@lru_cache(maxsize=8)
def _open_cached(spec: MovieSpec) -> Movie:
    return open_movie(spec.path, pixel_size_um=spec.pixel_size_um,
                      frame_interval_s=spec.frame_interval_s, axes=spec.axes)


def store_path(config: RunConfig) -> Path:
    """Where the run's store goes: ``output.dir / <name>.zarr``."""
    name = config.output.name or _movie_stem(config.input.path)
    return config.output.dir / f"{name}.zarr"


def _movie_stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr", ".tiff", ".tif", ".zarr", ".btf"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _channel_frames(movie: Movie, channel: int, start: int, stop: int) -> np.ndarray:
    """Frames [start, stop) of one channel, (n, Y, X) (2-D movies)."""
    return np.asarray(movie.data[start:stop, channel, 0].compute())


# --- Dask tasks (top-level functions: they travel to worker processes) -----------------


def _segment_task(chunk, *, spec, channels, params: SegmentParams, path: str) -> list[int]:
    import torch

    torch.set_num_threads(1)
    movie = spec.open()
    start, stop = chunk
    cells = _channel_frames(movie, channels[0], start, stop)
    nuclei = _channel_frames(movie, channels[1], start, stop) if channels[1] is not None else None
    labels = np.stack([
        segment_frame(cells[i], pixel_size_um=movie.pixel_size_um, params=params,
                      nuclei=None if nuclei is None else nuclei[i])
        for i in range(len(cells))
    ])
    store.write_label_frames(path, start, labels, name="segmentation")
    return [int(frame.max()) for frame in labels]


def _detect_task(chunk, *, spec, channel: int, params: DetectParams) -> pd.DataFrame:
    movie = spec.open()
    start, stop = chunk
    frames = _channel_frames(movie, channel, start, stop)
    return pd.concat([detect_frame(frames[i], start + i, pixel_size_um=movie.pixel_size_um,
                                   params=params) for i in range(len(frames))],
                     ignore_index=True)


def _zones_task(item, *, path: str, pixel_size_um: float, params: ZoneParams) -> pd.DataFrame:
    (start, stop), particles = item
    labels = store.open_labels(path)[start:stop]
    parts = [zones_for_frame(particles[particles["frame"] == t], labels[t - start],
                             pixel_size_um=pixel_size_um, params=params)
             for t in range(start, stop)]
    return pd.concat(parts, ignore_index=True)


# --- the run -------------------------------------------------------------------------


class Run:
    """One movie's run: the open movie, its store, and the stages still to do."""

    def __init__(self, config: RunConfig):
        self.config = config
        c = config.input
        self.spec = MovieSpec(str(c.path), c.pixel_size_um, c.frame_interval_s, c.axes)
        self.movie = self.spec.open()
        if self.movie.data.shape[2] != 1:
            raise InputError(f"{c.path}: 3-D (Z) movies are not supported yet; "
                             "project the stack to 2-D (e.g. maximum projection) first")
        self.channels = (
            self.movie.channel_index(c.channels.cells),
            self.movie.channel_index(c.channels.particles),
            None if c.channels.nuclei is None else self.movie.channel_index(c.channels.nuclei),
        )
        self.path = store_path(config)
        self.n_frames = int(self.movie.data.shape[0])
        self.dt_s = self.movie.frame_interval_s
        self.px_um = self.movie.pixel_size_um

    # store set-up and resume

    def _attrs(self) -> dict:
        return {
            "config": dump_config(self.config),
            "input_path": str(self.config.input.path.resolve()),
            "input_checksum": file_checksum(self.config.input.path),
            "pixel_size_um": self.px_um,
            "frame_interval_s": self.dt_s,
            "channel_names": list(self.movie.channel_names),
            "n_frames": self.n_frames,
            "shape_yx": list(self.movie.data.shape[-2:]),
        }

    def open_store(self) -> list[str]:
        """Create the store, or reopen an unfinished one made with the same config.

        Returns
        -------
        list of str
            Stages already done (resumed from a killed run).
        """
        attrs = self._attrs()
        if (self.path / "zarr.json").exists():
            old = store.read_attrs(self.path)
            if curation_versions(self.path):
                raise InputError(
                    f"{self.path} holds curation records (corrections made in napari); "
                    "redoing the run would lose them, so nothing was changed. Move or rename "
                    "the store first, or choose another output.name."
                )
            if old.get("complete") and not self.config.output.overwrite:
                raise InputError(
                    f"{self.path} already holds complete results; nothing was changed. "
                    "Set output.overwrite: true (or --set output.overwrite=true) to redo "
                    "them, or choose another output.name."
                )
            same = (old.get("config") == attrs["config"]
                    and old.get("input_checksum") == attrs["input_checksum"])
            if not old.get("complete") and same:
                done = store.stages_done(self.path)
                log.info("resuming %s: stages done %s", self.path, ", ".join(done) or "none")
                return done
        self.path.parent.mkdir(parents=True, exist_ok=True)
        store.create_store(self.path, attrs=attrs, overwrite=self.config.output.overwrite)
        return []

    # stages

    def segment_params(self) -> SegmentParams:
        """The segmentation parameters, with the cell diameter measured if not given."""
        params = self.config.segment
        if params.diameter_um is not None:
            return params
        middle = self.n_frames // 2
        cells = _channel_frames(self.movie, self.channels[0], middle, middle + 1)[0]
        diameter = estimate_diameter_um(cells, pixel_size_um=self.px_um, params=params)
        if diameter is None:
            log.warning("segment: no cells found in frame %d; using the model's own diameter", middle)
            return params
        log.info("segment: cell diameter measured on frame %d: %.1f um", middle, diameter)
        store.update_attrs(self.path, cell_diameter_um=round(diameter, 3))
        return params.model_copy(update={"diameter_um": diameter})

    def segment(self, client) -> None:
        shape = (self.n_frames, *self.movie.data.shape[-2:])
        store.create_labels(self.path, shape, name="segmentation")
        chunks = frame_chunks(self.n_frames, self.config.compute.frames_per_task)
        counts = map_tasks(client, _segment_task, chunks, desc="segment cells", spec=self.spec,
                           channels=(self.channels[0], self.channels[2]),
                           params=self.segment_params(), path=str(self.path))
        per_frame = [n for chunk in counts for n in chunk]
        log.info("segment: %.1f cells per frame (min %d, max %d)", np.mean(per_frame),
                 min(per_frame), max(per_frame))

    def track_cells(self, client) -> None:
        raw = store.open_labels(self.path, name="segmentation")
        store.create_labels(self.path, raw.shape)
        tracker = CellTracker(self.config.track_cells)
        from tqdm.auto import tqdm

        for t in tqdm(range(self.n_frames), desc="track cells", unit="frame"):
            frame = raw[t]
            store.write_label_frames(self.path, t, relabel(frame, tracker.update(frame, t))[None])
        log.info("track_cells: %d cells over the movie", tracker.next_id - 1)

    def detect(self, client) -> None:
        chunks = frame_chunks(self.n_frames, self.config.compute.frames_per_task)
        parts = map_tasks(client, _detect_task, chunks, desc="detect particles", spec=self.spec,
                          channel=self.channels[1], params=self.config.detect)
        detections = pd.concat(parts, ignore_index=True)
        log.info("detect: %.1f particles per frame", len(detections) / max(self.n_frames, 1))
        store.write_table(self.path, "detections", detections)

    def link(self, client) -> None:
        detections = store_table(self.path, "detections")
        particles = link_tracks(detections, pixel_size_um=self.px_um, frame_interval_s=self.dt_s,
                                params=self.config.link)
        log.info("link: %d tracks", particles["track_id"].nunique())
        store.write_table(self.path, "particles", particles)

    def zones(self, client) -> None:
        particles = store_table(self.path, "particles")
        chunks = frame_chunks(self.n_frames, max(self.config.compute.frames_per_task, 8))
        items = [((a, b), particles[particles["frame"].between(a, b - 1)]) for a, b in chunks]
        parts = map_tasks(client, _zones_task, items, desc="zones", path=str(self.path),
                          pixel_size_um=self.px_um, params=self.config.zones)
        zoned = pd.concat(parts, ignore_index=True).sort_values(["track_id", "frame"],
                                                                  ignore_index=True)
        store.write_table(self.path, "particles", zoned)

    def classify(self, client) -> None:
        particles = store_table(self.path, "particles")
        particles, events = classify_tracks(particles, frame_interval_s=self.dt_s,
                                            params=self.config.classify)
        store.write_table(self.path, "particles", particles)
        store.write_table(self.path, "events", events)
        store.write_table(self.path, "tracks", summarize_tracks(particles))

    def kinetics(self, client) -> None:
        particles = store_table(self.path, "particles")
        events = store_table(self.path, "events")
        geometry = cell_geometry(store.open_labels(self.path), pixel_size_um=self.px_um)
        cells, movie = cell_rates(particles, events, frame_interval_s=self.dt_s,
                                  params=self.config.kinetics, cells=geometry)
        ds = cell_kinetics(particles, events, frame_interval_s=self.dt_s, n_frames=self.n_frames,
                           cell_ids=cells["cell_id"].to_numpy())
        store.write_kinetics(self.path, ds)
        store.write_table(self.path, "cells", cells)
        store.write_table(self.path, "movie", movie)

    def export(self, client) -> None:
        store.write_geff(self.path, store_table(self.path, "particles"),
                         pixel_size_um=self.px_um, frame_interval_s=self.dt_s)


def store_table(path: Path, name: str) -> pd.DataFrame:
    """A table of the store being written (incomplete stores included)."""
    from pipeline.results import read_table

    return read_table(path, name)


def run(config: RunConfig, *, client=None) -> Path:
    """Run every stage not yet done for one movie and return the store's path.

    Parameters
    ----------
    config
        A validated run config.
    client
        A ``distributed.Client`` to use; by default one is made from ``config.compute``
        for the duration of the run.

    Returns
    -------
    pathlib.Path
        The complete ``<name>.zarr`` store.
    """
    job = Run(config)
    done = job.open_store()
    todo = [stage for stage in STAGES if stage not in done]
    if todo:
        if client is None and todo != ["export"]:
            with dask_client(config.compute) as own:
                _run_stages(job, todo, own)
        else:
            _run_stages(job, todo, client)
    store.mark_complete(job.path)
    return job.path


def _run_stages(job: Run, stages: list[str], client) -> None:
    for stage in stages:
        start = time.perf_counter()
        getattr(job, stage)(client)
        store.mark_stage_done(job.path, stage)
        seconds = time.perf_counter() - start
        timings = store.read_attrs(job.path).get("stage_seconds", {})
        store.update_attrs(job.path, stage_seconds={**timings, stage: round(seconds, 2)})
        log.info("%-11s done in %.1f s", stage, seconds)
