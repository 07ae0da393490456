"""Run the pipeline on one movie: stages wired to the reader, the store and Dask.

Stages, in order (each one's result is in the store when it ends, so a killed run
resumes at the first unfinished stage):

=============  ==============================================  =====================
stage          what it does                                    writes
=============  ==============================================  =====================
segment        Cellpose per frame (Dask tasks)                 labels/segmentation
track_cells    stable cell ids across frames                   labels/cells
detect         particles per frame (Dask tasks)                tables/detections
link           particle tracks, gap closing, gap filling       tables/particles
zones          distance to membrane, cell, zone (Dask tasks)   tables/particles
classify       states over time, events, track table           particles, events, tracks
kinetics       per-cell time series and rates                  kinetics, cells, movie
export         GEFF graph of the tracks; the movie as the      tracks.geff, 0 (root
               root OME-Zarr image; cell label colours         image), labels/cells
=============  ==============================================  =====================

Resume: a stage is marked done in the store's attributes only after its outputs are
written; ``zones`` and ``classify`` replace the particles table they read, so each
first keeps a copy of its input (under ``.tmp/inputs``, dropped when the store is
complete) and a rerun after a kill starts from that copy, not from its own half-
committed output. A store is reused only when it was made from the same config
(``compute`` and ``output.overwrite`` aside: they do not change results) and the
same input (checksum; a file whose size and modification time match the store's
record keeps its recorded checksum, so resuming a multi-GB movie does not re-read it).

``uptrack batch`` (`pipeline.run.batch`) runs many movies on one shared cluster: it passes
its client, the movie's metadata (kept in the store's attrs), a log file, a stage
callback, and ``stages_on_cluster=True`` so that the single-process stages also run
as Dask tasks, on the workers, not in the process that drives the batch.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import InputError
from pipeline.io import store
from pipeline.io.curation import curation_versions
from pipeline.io.lock import store_lock
from pipeline.io.movie import Movie, file_checksum, open_movie
from pipeline.io.results import read_table
from pipeline.run.compute import dask_client, frame_chunks, map_tasks, progress, progress_to
from pipeline.run.config import RunConfig, dump_config
from pipeline.stages.aggregates import label_aggregates, rates_by_label
from pipeline.stages.classify import classify_tracks
from pipeline.stages.compartments import colocalization_over_time, colocalize, compartment_rates
from pipeline.stages.detect import DetectParams, detect_frame, estimate_psf
from pipeline.stages.detect.params import PSF_FRAMES
from pipeline.stages.kinetics import kinetics_tables
from pipeline.stages.link import close_gaps, fill_gaps, link_tracks
from pipeline.stages.motion import directed_runs, motion_segments
from pipeline.stages.plausibility import background_warnings, blank_channel, cell_areas, cell_warnings, duplicated_frames
from pipeline.stages.propagate import membrane_stain, propagate_labels, propagation_agrees
from pipeline.stages.segment import SegmentParams, estimate_diameter_um, resolve_model, segment_frame
from pipeline.stages.survival import spells, survival_table
from pipeline.stages.track_cells import CellTracker, relabel
from pipeline.stages.zones import ZoneParams, cell_geometry, zones_for_frame

log = logging.getLogger(__name__)

STAGES = ("segment", "track_cells", "detect", "link", "zones", "classify", "kinetics", "export")
#: Stages that run in one process (the others map Dask tasks over frames). With
#: ``stages_on_cluster`` each runs as one Dask task on a worker.
SERIAL_STAGES = ("track_cells", "link", "classify", "kinetics", "export")
#: Where `Run` keeps the input of a stage that replaces it (see the module docstring).
_INPUTS = ".tmp/inputs"


@dataclass(frozen=True)
class MovieSpec:
    """How to open the movie, in a form that travels to Dask workers."""

    path: str
    pixel_size_um: float | None
    frame_interval_s: float | None
    axes: str | None
    n_channels: int | None = None

    def open(self) -> Movie:
        return _open_cached(self)


@lru_cache(maxsize=8)
def _open_cached(spec: MovieSpec) -> Movie:
    return open_movie(spec.path, pixel_size_um=spec.pixel_size_um,
                      frame_interval_s=spec.frame_interval_s, axes=spec.axes,
                      n_channels=spec.n_channels)


def store_path(config: RunConfig) -> Path:
    """Where the run's store goes: ``output.dir / <name>.zarr``."""
    name = config.output.name or movie_stem(config.input.path)
    return config.output.dir / f"{name}.zarr"


def movie_stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr", ".tiff", ".tif", ".zarr", ".btf"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _channel_frames(movie: Movie, channel: int, start: int, stop: int) -> np.ndarray:
    """Frames [start, stop) of one channel, (n, Y, X) (2-D movies)."""
    return np.asarray(movie.data[start:stop, channel, 0].compute())


# --- Dask tasks (top-level functions: they travel to worker processes) -----------------


def _segment_task(chunk, *, spec, channels, params: SegmentParams, path: str) -> list[tuple[int, int]]:
    """Segment frames [start, stop): Cellpose on keyframes, masks carried between them; (cells, Cellpose runs)."""
    import torch

    torch.set_num_threads(1)
    movie = spec.open()
    start, stop = chunk
    cells = _channel_frames(movie, channels[0], start, stop)
    nuclei = _channel_frames(movie, channels[1], start, stop) if channels[1] is not None else None
    labels, membrane, keyframes = [], False, 0
    for i in range(len(cells)):
        carried = None
        if i > 0 and (start + i) % params.keyframe_interval != 0:
            carried = propagate_labels(labels[-1], cells[i], membrane=membrane)
            if not propagation_agrees(carried, cells[i], labels[-1], cells[i - 1], membrane=membrane):
                carried = None  # the cells moved or changed: segment this frame
        if carried is None:
            carried = segment_frame(cells[i], pixel_size_um=movie.pixel_size_um, params=params,
                                    nuclei=None if nuclei is None else nuclei[i])
            membrane = params.keyframe_interval > 1 and membrane_stain(carried, cells[i])
            keyframes += 1
        labels.append(carried)
    store.write_label_frames(path, start, np.stack(labels), name="segmentation")
    return [(int(frame.max()), keyframes if i == 0 else 0) for i, frame in enumerate(labels)]


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


def _stage_task(config: RunConfig, stage: str, log_file: str | None) -> None:
    """Run one single-process stage on a Dask worker (``stages_on_cluster``)."""
    with log_to_file(log_file), progress_to(lambda *_: None):
        getattr(Run(config), stage)(None)


#: (thread, log file) pairs with a handler attached by `log_to_file`.
_LOGGING_TO: set[tuple[int, str]] = set()


@contextmanager
def log_to_file(path: str | Path | None) -> Iterator[None]:
    """Append this thread's ``pipeline`` log records (INFO and up) to ``path``.

    Only records logged by the calling thread go to the file, so movies run in
    parallel threads (``uptrack batch``) each get their own log.
    """
    key = None if path is None else (threading.get_ident(), str(Path(path).resolve()))
    if key is None or key in _LOGGING_TO:  # none asked, or this thread logs there already
        yield
        return
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)-7s %(name)s [%(processName)s]: %(message)s"))
    thread = threading.get_ident()
    handler.addFilter(lambda record: record.thread == thread)
    logger = logging.getLogger("pipeline")
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    _LOGGING_TO.add(key)
    try:
        yield
    finally:
        _LOGGING_TO.discard(key)
        logger.removeHandler(handler)
        handler.close()


def _comparable(config: dict) -> dict:
    """The parts of a dumped config that decide the results (not compute, not overwrite)."""
    config = {key: value for key, value in config.items() if key != "compute"}
    config["output"] = {k: v for k, v in config.get("output", {}).items() if k != "overwrite"}
    return config


# --- the run -------------------------------------------------------------------------



@dataclass(frozen=True)
class StoreDecision:
    """What a run does with what is at its output path (:func:`decide_store`).

    ``action`` is ``"new"`` (create), ``"resume"`` (continue after ``done`` stages),
    ``"skip"`` (complete already, same config and input), ``"replace"`` (discard and redo)
    or ``"refuse"`` (leave it; ``reason`` says why and what to do).
    """

    action: str
    reason: str = ""
    done: tuple[str, ...] = ()
    label: str = ""  # a few words for the dry run's table


def decide_store(path: Path, state: str, old: dict, *, overwrite: bool, skip_complete: bool,
                 has_curation: bool) -> StoreDecision:
    """The one rule for an existing store, used by ``uptrack run``, ``uptrack batch`` and the dry run.

    Parameters
    ----------
    path : Path
        The store.
    state, old : str, dict
        What :meth:`Run.inspect_store` found.
    overwrite : bool
        ``output.overwrite``: complete results may be replaced.
    skip_complete : bool
        A complete store of the same config and input is kept and the movie skipped (batch);
        otherwise it is redone with ``overwrite`` or refused (run).
    has_curation : bool
        The store holds reviewers' corrections, which a redo would lose.
    """
    if state == "foreign":
        return StoreDecision("refuse", f"{path} exists and is not an uptrack store; nothing was changed. "
                                       "Move it away or choose another output.name / output.dir.",
                             label="not an uptrack store")
    if state == "complete" and skip_complete:
        return StoreDecision("skip", "complete already, same config and input")
    if state == "partial":
        return StoreDecision("resume", "unfinished run of the same config and input",
                             tuple(old.get("stages_completed", [])))
    if state == "none":
        return StoreDecision("new", "replacing a store whose creation was interrupted" if old or path.exists() else "")
    if has_curation:
        return StoreDecision("refuse", f"{path} holds curation records (corrections made in napari); redoing "
                                       "the run would lose them, so nothing was changed. Move or rename the "
                                       "store first, or choose another output.name.", label="holds curation records")
    if old.get("complete") and not overwrite:
        what = "complete results" if state == "complete" else "complete results of another config or input"
        return StoreDecision("refuse", f"{path} already holds {what}; nothing was changed. Set output.overwrite: "
                                       "true (or --set output.overwrite=true) to redo them, or choose another "
                                       "output.name / output.dir.",
                             label="other config's results" if state == "other" else "complete results")
    if state == "other":
        return StoreDecision("replace", "other config or input",
                             label="replace (other config)" if old.get("complete") else "restart (other config)")
    return StoreDecision("replace", "overwrite: true", label="replace (overwrite)")


class Run:
    """One movie's run: the open movie, its store, and the stages still to do."""

    def __init__(self, config: RunConfig):
        self.config = config
        c = config.input
        self.spec = MovieSpec(str(c.path), c.pixel_size_um, c.frame_interval_s, c.axes, c.n_channels)
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

    def _input_identity(self, old: dict | None = None) -> dict:
        """Checksum (and size, mtime) of the input; reused from ``old`` attrs when the file is unchanged."""
        path = self.config.input.path
        stat = None
        if path.is_file():
            st = path.stat()
            stat = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        if stat and old and old.get("input_stat") == stat and old.get("input_checksum"):
            return {"input_checksum": old["input_checksum"], "input_stat": stat}
        return {"input_checksum": file_checksum(path), "input_stat": stat}

    def _attrs(self, old: dict | None = None) -> dict:
        return {
            "config": dump_config(self.config),
            "input_path": str(self.config.input.path.resolve()),
            **self._input_identity(old),
            "pixel_size_um": self.px_um,
            "frame_interval_s": self.dt_s,
            "channel_names": list(self.movie.channel_names),
            "n_frames": self.n_frames,
            "shape_yx": list(self.movie.data.shape[-2:]),
        }

    def inspect_store(self) -> tuple[str, dict]:
        """What is at the output path already, and its attributes.

        Returns
        -------
        state : str
            ``"none"`` (nothing, or a store whose creation was interrupted),
            ``"partial"`` (unfinished, same config and input: resumable),
            ``"complete"`` (finished, same config and input), ``"other"`` (an uptrack
            store made from another config or input; ``attrs["complete"]`` says if
            finished), ``"foreign"`` (something that is not an uptrack store).
        attrs : dict
            The store's attributes ({} for none and foreign).
        """
        found = store.probe(self.path)
        if found != "store":
            return ("none" if found in ("none", "interrupted") else "foreign"), {}
        old = store.read_attrs(self.path)
        same = (_comparable(old.get("config", {})) == _comparable(dump_config(self.config))
                and old.get("input_checksum") == self._input_identity(old)["input_checksum"])
        if not same:
            return "other", old
        return ("complete" if old.get("complete") else "partial"), old

    def store_decision(self, *, skip_complete: bool) -> StoreDecision:
        """:func:`decide_store` for this run's output path and config."""
        state, old = self.inspect_store()
        return decide_store(self.path, state, old, overwrite=self.config.output.overwrite,
                            skip_complete=skip_complete, has_curation=bool(old) and bool(curation_versions(self.path)))

    def open_store(self, metadata: dict | None = None) -> list[str]:
        """Create the store, or reopen an unfinished one made with the same config.

        Parameters
        ----------
        metadata
            Descriptive values (condition, replicate, ...) kept as the ``metadata``
            attribute; updated on a resumed store.

        Returns
        -------
        list of str
            Stages already done (resumed from a killed run).
        """
        decision = self.store_decision(skip_complete=False)
        if decision.action == "refuse":
            raise InputError(decision.reason)
        if decision.action == "resume":
            old = store.read_attrs(self.path)
            if metadata is not None and old.get("metadata") != metadata:
                store.update_attrs(self.path, metadata=metadata)
            done = store.stages_done(self.path)
            log.info("resuming %s: stages done %s", self.path, ", ".join(done) or "none")
            return done
        old = {} if decision.action == "new" else store.read_attrs(self.path)
        if decision.action == "new" and self.path.exists():
            log.info("%s: replacing a store whose creation was interrupted", self.path)
            shutil.rmtree(self.path)
        attrs = self._attrs(old)
        if metadata is not None:
            attrs["metadata"] = metadata
        self.path.parent.mkdir(parents=True, exist_ok=True)
        store.create_store(self.path, attrs=attrs, overwrite=self.config.output.overwrite)
        return []

    def warn(self, stage: str, messages: list[str]) -> None:
        """Log plausibility (QC) warnings and record them in the store's ``qc_warnings`` attribute
        (a list of {"stage", "message"}; a message already recorded is not repeated)."""
        if not messages:
            return
        recorded = list(store.read_attrs(self.path).get("qc_warnings", []))
        for message in messages:
            log.warning("%s: %s", stage, message)
            entry = {"stage": stage, "message": message}
            if entry not in recorded:
                recorded.append(entry)
        store.update_attrs(self.path, qc_warnings=recorded)

    def _stage_input(self, stage: str, name: str) -> pd.DataFrame:
        """Table ``name`` as it was when ``stage`` first started (see the module docstring)."""
        group = f"{_INPUTS}/{stage}"
        if not store.has_table(self.path, name, group=group):
            store.write_table(self.path, name, store_table(self.path, name), group=group)
        return read_table(self.path, name, group=group)

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
        return params.model_copy(update={"diameter_um": diameter})

    def segment(self, client) -> None:
        shape = (self.n_frames, *self.movie.data.shape[-2:])
        store.create_labels(self.path, shape, name="segmentation")
        params = self.segment_params()
        per_task = self.config.compute.frames_per_task
        if params.keyframe_interval > 1:  # a task starts at a keyframe and holds whole keyframe intervals
            per_task = params.keyframe_interval * max(1, round(per_task / params.keyframe_interval))
        chunks = frame_chunks(self.n_frames, per_task)
        if self.config.segment.diameter_um is None and params.diameter_um is not None:
            store.update_attrs(self.path, cell_diameter_um=round(params.diameter_um, 3))
        counts = map_tasks(client, _segment_task, chunks, desc="segment cells", spec=self.spec,
                           channels=(self.channels[0], self.channels[2]), params=params, path=str(self.path))
        per_frame = [n for chunk in counts for n, _ in chunk]
        cellpose_runs = sum(k for chunk in counts for _, k in chunk)
        log.info("segment: %.1f cells per frame (min %d, max %d); Cellpose on %d of %d frames", np.mean(per_frame),
                 min(per_frame), max(per_frame), cellpose_runs, self.n_frames)
        store.update_attrs(self.path, cellpose_frames=int(cellpose_runs))

    def track_cells(self, client) -> None:
        raw = store.open_labels(self.path, name="segmentation")
        store.create_labels(self.path, raw.shape)
        tracker = CellTracker(self.config.track_cells)
        bar = progress(self.n_frames, "track cells", unit="frame")
        areas = []
        for t in range(self.n_frames):
            frame = raw[t]
            stable = relabel(frame, tracker.update(frame, t))
            store.write_label_frames(self.path, t, stable[None])
            areas.append(cell_areas(stable, t))
            bar.update()
        bar.close()
        middle = self.n_frames // 2
        if self.n_frames:
            cells_frame = _channel_frames(self.movie, self.channels[0], middle, middle + 1)[0]
            self.warn("track_cells", blank_channel(cells_frame, middle, channel="cells"))
        if areas:
            self.warn("track_cells", cell_warnings(pd.concat(areas, ignore_index=True), self.n_frames))
        log.info("track_cells: %d cells over the movie", tracker.next_id - 1)

    def _detect_params(self) -> DetectParams:
        """The detect config with the PSF width measured once for the movie (when not configured)."""
        params = self.config.detect
        if params.psf_sigma_um is not None or self.n_frames == 0:
            return params
        picks = np.unique(np.linspace(0, self.n_frames - 1, PSF_FRAMES).round().astype(int))
        frames = np.stack([np.asarray(self.movie.data[t, self.channels[1], 0]) for t in picks])
        psf = estimate_psf(frames, pixel_size_um=self.px_um, params=params)
        if psf.warning():
            self.warn("detect", [psf.warning()])
        log.info("detect: PSF sigma %.3f µm (model error %.3f) from %d spots on %d frames", psf.sigma_um,
                 psf.model_error, psf.n_spots, len(picks))
        return params.model_copy(update={"psf_sigma_um": psf.sigma_um})

    def detect(self, client) -> None:
        chunks = frame_chunks(self.n_frames, self.config.compute.frames_per_task)
        parts = map_tasks(client, _detect_task, chunks, desc="detect particles", spec=self.spec,
                          channel=self.channels[1], params=self._detect_params())
        detections = pd.concat(parts, ignore_index=True)
        log.info("detect: %.1f particles per frame", len(detections) / max(self.n_frames, 1))
        particle_frames = (self.movie.data[t, self.channels[1], 0] for t in range(self.n_frames))
        self.warn("detect", duplicated_frames(particle_frames, self.dt_s))
        if self.n_frames:
            middle = self.n_frames // 2
            frame = _channel_frames(self.movie, self.channels[1], middle, middle + 1)[0]
            self.warn("detect", background_warnings(frame, middle, channel="particles"))
        store.write_table(self.path, "detections", detections)

    def link(self, client) -> None:
        detections = store_table(self.path, "detections")
        scale = {"pixel_size_um": self.px_um, "frame_interval_s": self.dt_s, "params": self.config.link}
        particles = link_tracks(detections, **scale)
        n_linked = particles["track_id"].nunique()
        particles = close_gaps(particles, **scale)
        n_rows = len(particles)
        particles = fill_gaps(particles, self.movie.data[:, self.channels[1], 0], detect_params=self._detect_params(),
                              **scale)
        log.info("link: %d tracks (%d before gap closing), %d detections recovered in skipped frames",
                 particles["track_id"].nunique(), n_linked, len(particles) - n_rows)
        store.write_table(self.path, "particles", particles)

    def zones(self, client) -> None:
        particles = self._stage_input("zones", "particles")
        chunks = frame_chunks(self.n_frames, max(self.config.compute.frames_per_task, 8))
        items = [((a, b), particles[particles["frame"].between(a, b - 1)]) for a, b in chunks]
        parts = map_tasks(client, _zones_task, items, desc="zones", path=str(self.path),
                          pixel_size_um=self.px_um, params=self.config.zones)
        zoned = pd.concat(parts, ignore_index=True).sort_values(["track_id", "frame"],
                                                                  ignore_index=True)
        store.write_table(self.path, "particles", zoned)

    def classify(self, client) -> None:
        particles = self._stage_input("classify", "particles")
        particles, events = classify_tracks(particles, frame_interval_s=self.dt_s,
                                            params=self.config.classify)
        store.write_table(self.path, "particles", particles)
        store.write_table(self.path, "events", events)

    def kinetics(self, client) -> None:
        particles = store_table(self.path, "particles")
        events = store_table(self.path, "events")
        geometry = cell_geometry(store.open_labels(self.path), pixel_size_um=self.px_um)
        tables = kinetics_tables(particles, events, frame_interval_s=self.dt_s, n_frames=self.n_frames,
                                 params=self.config.kinetics, cells=geometry)
        store.write_kinetics(self.path, tables.pop("kinetics"))
        for name, table in tables.items():
            store.write_table(self.path, name, table)
        spell_table = spells(particles, frame_interval_s=self.dt_s)  # release/retention curves (issue 14)
        store.write_table(self.path, "spells", spell_table)
        store.write_table(self.path, "survival", survival_table(spell_table, ci_level=self.config.kinetics.ci_level))
        scale = {"pixel_size_um": self.px_um, "frame_interval_s": self.dt_s}  # motion (issue 14), default thresholds
        store.write_table(self.path, "motion", motion_segments(particles, **scale))
        store.write_table(self.path, "runs", directed_runs(particles, **scale))
        if particles["track_id"].nunique() >= 5:  # aggregates (issue 14): brightness mixture, rates by label
            _, labels, _ = label_aggregates(particles)
            store.write_table(self.path, "aggregates", labels)
            store.write_table(self.path, "aggregate_rates", rates_by_label(
                particles, events, labels, frame_interval_s=self.dt_s, params=self.config.kinetics))
        markers = self.config.input.channels.markers  # compartment markers (issue 14)
        if markers:
            channels = {name: self.movie.data[:, self.movie.channel_index(ch), 0] for name, ch in markers.items()}
            coloc = colocalize(particles, channels, params=self.config.compartments)
            store.write_table(self.path, "colocalization", coloc[["track_id", "frame", *[
                c for name in markers for c in (f"{name}_enrichment", f"in_{name}")]]])
            store.write_table(self.path, "compartments", compartment_rates(
                coloc, list(markers), frame_interval_s=self.dt_s, params=self.config.compartments,
                ci_level=self.config.kinetics.ci_level))
            store.write_table(self.path, "colocalization_over_time", colocalization_over_time(coloc, list(markers)))

    def export(self, client) -> None:
        """GEFF graph of the tracks; the movie as the store's OME-Zarr image; one colour per cell label."""
        store.write_geff(self.path, store_table(self.path, "particles"),
                         pixel_size_um=self.px_um, frame_interval_s=self.dt_s)
        store.write_image(self.path, self.movie.data, channel_names=list(self.movie.channel_names),
                          downsample=self.config.output.image_downsample)
        store.label_colors(self.path, name="cells")


def store_table(path: Path, name: str) -> pd.DataFrame:
    """A table of the store being written (incomplete stores included)."""
    return read_table(path, name)


def run(config: RunConfig, *, client=None, metadata: dict | None = None,
        log_file: str | Path | None = None, on_stage: Callable[[str, bool], None] | None = None,
        stages_on_cluster: bool = False) -> Path:
    """Run every stage not yet done for one movie and return the store's path.

    Parameters
    ----------
    config
        A validated run config.
    client
        A ``distributed.Client`` to use; by default one is made from ``config.compute``
        for the duration of the run.
    metadata
        Descriptive values of the movie (condition, particle type, replicate, ...),
        kept in the store's ``metadata`` attribute.
    log_file
        Also append this run's log to this file (records of the calling thread, and
        of the stages run on workers with ``stages_on_cluster``).
    on_stage
        Called as ``on_stage(stage, False)`` when a stage starts and
        ``on_stage(stage, True)`` when it is done.
    stages_on_cluster
        With a client, run the single-process stages (`SERIAL_STAGES`) as Dask tasks
        on the workers too, not in this process.

    Returns
    -------
    pathlib.Path
        The complete ``<name>.zarr`` store.
    """
    with log_to_file(log_file):
        job = Run(config)
        resolve_model(config.segment.model)  # missing weights: an error before any store or cluster exists
        final = job.path
        with store_lock(final):
            staged = job.store_decision(skip_complete=False).action == "replace" and _holds_complete(final)
            if staged:  # the complete store stays in place until the new one is complete
                job.path = store.staging_path(final)
                if job.path.exists():
                    shutil.rmtree(job.path)
            done = job.open_store(metadata)
            todo = [stage for stage in STAGES if stage not in done]
            options = {"on_stage": on_stage, "on_cluster": stages_on_cluster,
                       "log_file": None if log_file is None else str(log_file)}
            if todo:
                if client is None and todo != ["export"]:
                    with dask_client(config.compute) as own:
                        _run_stages(job, todo, own, **options)
                else:
                    _run_stages(job, todo, client, **options)
            store.mark_complete(job.path)
            if staged:
                store.swap_in(job.path, final)
                job.path = final
        log.info("%s complete", job.path)
    return job.path


def _holds_complete(path: Path) -> bool:
    """Whether ``path`` holds a complete uptrack store."""
    return store.probe(path) == "store" and bool(store.read_attrs(path).get("complete"))


def _run_stages(job: Run, stages: list[str], client, *, on_stage=None, on_cluster: bool = False,
                log_file: str | None = None) -> None:
    for stage in stages:
        if on_stage is not None:
            on_stage(stage, False)
        start = time.perf_counter()
        if on_cluster and client is not None and stage in SERIAL_STAGES:
            client.submit(_stage_task, job.config, stage, log_file, pure=False).result()
        else:
            getattr(job, stage)(client)
        seconds = time.perf_counter() - start
        store.mark_stage_done(job.path, stage, seconds)
        log.info("%-11s done in %.1f s", stage, seconds)
        if on_stage is not None:
            on_stage(stage, True)
