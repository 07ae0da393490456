"""Exports of a store for other tools: CSV tables, TrackMate XML (Fiji), Cell Tracking Challenge labels.

Every export reads the store through `pipeline.io.results.Results` (``load_results(path)``, or
``load_results(path, curated=True)`` for the reviewer's corrections) and writes plain files:

=========  ====================================================================================
format     what is written
=========  ====================================================================================
csv        ``particles.csv``, ``tracks.csv``, ``events.csv``, ``cells.csv``, ``movie.csv`` (the
           tables of pipeline/README.md, states as words) and ``columns.csv`` (table, column,
           dtype, unit: x/y px, frame, and the unit in each physical column's name)
trackmate  ``<name>.xml``: a TrackMate model (spots, tracks, filtered tracks, feature
           declarations, image settings) in µm and seconds, with uptrack's particle columns as
           extra spot features (``STATE``/``ZONE`` as int codes listed in the feature name)
ctc        Cell Tracking Challenge TRA layout for the cell labels: ``man_track000.tif``, ... (uint16,
           one per frame) and ``man_track.txt`` (``L B E P``: label, first frame, last frame,
           parent); ``cell_ids.csv`` maps CTC labels to uptrack's ``cell_id``
=========  ====================================================================================

Cell Tracking Challenge labels must be present in every frame between their first and last; a cell
id that disappears and comes back is written as a new label whose parent is its earlier stretch.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from pipeline import __version__
from pipeline.errors import InputError
from pipeline.io.results import Results
from pipeline.io.store import column_unit
from pipeline.vocabulary import BACKGROUND, STATES, ZONES

#: Tables written by the CSV export, in order.
CSV_TABLES = ("particles", "tracks", "events", "cells", "movie")
#: TrackMate's version whose XML layout is written (``TrackMate/src/.../io/TmXmlWriter.java``).
TRACKMATE_VERSION = "7.11.1"


# --- CSV ------------------------------------------------------------------------------------


def export_csv(results: Results, folder: str | Path) -> list[Path]:
    """Write the store's tables as CSV files in ``folder`` (created if needed).

    Parameters
    ----------
    results : Results
        An opened store (``load_results(path)``; ``curated=True`` for the corrected tables).
    folder : str or Path
        Output folder.

    Returns
    -------
    list of Path
        The files written (one per table, then ``columns.csv``).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written, columns = [], []
    for name in CSV_TABLES:
        table = getattr(results, name)
        file = folder / f"{name}.csv"
        table.to_csv(file, index=False)
        written.append(file)
        columns += [{"table": name, "column": c, "dtype": str(table[c].dtype), "unit": column_unit(c) or ""}
                    for c in table.columns]
    pd.DataFrame(columns, columns=["table", "column", "dtype", "unit"]).to_csv(folder / "columns.csv", index=False)
    return [*written, folder / "columns.csv"]


# --- TrackMate XML -----------------------------------------------------------------------------

#: uptrack particle column -> (TrackMate feature, name, TrackMate dimension, isint), beyond the standard ones.
_EXTRA_SPOT_FEATURES = {
    "mass": ("MASS", "Mass (trackpy, counts)", "INTENSITY", False),
    "integrated_intensity": ("TOTAL_INTENSITY", "Integrated intensity (counts)", "INTENSITY", False),
    "track_id": ("UPTRACK_TRACK_ID", "uptrack track id", "NONE", True),
    "cell_id": ("CELL_ID", "Cell id (labels/cells)", "NONE", True),
    "distance_um": ("DISTANCE_TO_MEMBRANE", "Signed distance to membrane (um, <0 inside)", "LENGTH", False),
    "zone": ("ZONE", "Zone " + " ".join(f"{i}={z}" for i, z in enumerate(ZONES)) + " -1=none", "NONE", True),
    "state": ("STATE", "State " + " ".join(f"{i}={s}" for i, s in enumerate(STATES)) + " -1=none", "NONE", True),
}
_STANDARD_SPOT_FEATURES = (
    ("QUALITY", "Quality", "QUALITY", False),
    ("POSITION_X", "X", "POSITION", False),
    ("POSITION_Y", "Y", "POSITION", False),
    ("POSITION_Z", "Z", "POSITION", False),
    ("POSITION_T", "T", "TIME", False),
    ("FRAME", "Frame", "NONE", True),
    ("RADIUS", "Radius", "LENGTH", False),
    ("VISIBILITY", "Visibility", "NONE", True),
)
_EDGE_FEATURES = (
    ("SPOT_SOURCE_ID", "Source spot ID", "NONE", True),
    ("SPOT_TARGET_ID", "Target spot ID", "NONE", True),
    ("LINK_COST", "Edge cost", "COST", False),
    ("GAP_FRAMES", "Frames missing between the spots", "NONE", True),
    ("DISPLACEMENT", "Displacement", "LENGTH", False),
)
_TRACK_FEATURES = (
    ("TRACK_INDEX", "Track index", "NONE", True),
    ("TRACK_ID", "Track ID", "NONE", True),
    ("NUMBER_SPOTS", "Number of spots in track", "NONE", True),
    ("NUMBER_GAPS", "Number of gaps", "NONE", True),
    ("TRACK_START", "Track start", "TIME", False),
    ("TRACK_STOP", "Track stop", "TIME", False),
    ("TRACK_DURATION", "Track duration", "TIME", False),
)


def export_trackmate(results: Results, file: str | Path) -> Path:
    """Write the particle tracks as a TrackMate XML file that Fiji's TrackMate opens (File > Load).

    Spots are the particles table's rows (``ID`` = row number), positions in µm
    (``x × pixel_size_um``) and times in s (``frame × frame_interval_s``), ``QUALITY`` = trackpy
    mass, ``RADIUS`` = the fitted ``size_um`` where known (else trackpy's ``size`` in µm). Edges
    join consecutive detections of a track (``GAP_FRAMES`` > 0 across a closed gap). A track of one
    detection has no edge, so TrackMate lists its spot but no track. ``STATE`` and ``ZONE`` are
    int codes (TrackMate features are numbers); the code of each word is in the feature's name.

    Parameters
    ----------
    results : Results
        An opened store.
    file : str or Path
        The ``.xml`` file to write.

    Returns
    -------
    Path
        ``file``.
    """
    file = Path(file)
    px, dt = results.pixel_size_um, results.frame_interval_s
    particles = results.particles.reset_index(drop=True)
    root = ET.Element("TrackMate", version=TRACKMATE_VERSION)
    ET.SubElement(root, "Log").text = f"Exported by uptrack {__version__} from {results.path}"
    model = ET.SubElement(root, "Model", spatialunits="µm", timeunits="s")
    declarations = ET.SubElement(model, "FeatureDeclarations")
    extra = {c: f for c, f in _EXTRA_SPOT_FEATURES.items() if c in particles.columns}
    for tag, features in (("SpotFeatures", (*_STANDARD_SPOT_FEATURES, *extra.values())),
                          ("EdgeFeatures", _EDGE_FEATURES), ("TrackFeatures", _TRACK_FEATURES)):
        group = ET.SubElement(declarations, tag)
        for feature, name, dimension, isint in features:
            ET.SubElement(group, "Feature", feature=feature, name=name, shortname=name.split(" (")[0][:20],
                          dimension=dimension, isint=str(isint).lower())
    _trackmate_spots(model, particles, px, dt, extra)
    tracks = _trackmate_tracks(model, particles, px, dt)
    filtered = ET.SubElement(model, "FilteredTracks")
    for track_id in tracks:
        ET.SubElement(filtered, "TrackID", TRACK_ID=str(track_id))
    _trackmate_settings(root, results, particles)
    ET.indent(root)
    file.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(file, encoding="UTF-8", xml_declaration=True)
    return file


def _trackmate_spots(model: ET.Element, particles: pd.DataFrame, px: float, dt: float, extra: dict) -> None:
    """``AllSpots``: one ``SpotsInFrame`` per frame, one ``Spot`` per detection."""
    codes = {"state": STATES, "zone": ZONES}
    radius = (particles["size_um"] if "size_um" in particles.columns
              else particles["size"] * px if "size" in particles.columns else pd.Series(px, index=particles.index))
    quality = particles["mass"] if "mass" in particles.columns else pd.Series(1.0, index=particles.index)
    spots = ET.SubElement(model, "AllSpots", nspots=str(len(particles)))
    for frame, rows in particles.groupby("frame", sort=True):
        in_frame = ET.SubElement(spots, "SpotsInFrame", frame=str(int(frame)))
        for i, row in rows.iterrows():
            attrs = {"ID": str(i), "name": f"ID{i}", "QUALITY": _num(quality[i]), "POSITION_X": _num(row["x"] * px),
                     "POSITION_Y": _num(row["y"] * px), "POSITION_Z": "0.0", "POSITION_T": _num(frame * dt),
                     "FRAME": str(int(frame)), "RADIUS": _num(radius[i]), "VISIBILITY": "1"}
            for column, (feature, _, _, isint) in extra.items():
                value = row[column]
                if column in codes:
                    value = codes[column].index(value) if isinstance(value, str) and value in codes[column] else -1
                attrs[feature] = str(int(value)) if isint else _num(value)
            ET.SubElement(in_frame, "Spot", attrs)


def _trackmate_tracks(model: ET.Element, particles: pd.DataFrame, px: float, dt: float) -> list[int]:
    """``AllTracks``: one ``Track`` per track with at least one edge; returns their ids."""
    all_tracks = ET.SubElement(model, "AllTracks")
    written = []
    for index, (track_id, rows) in enumerate(particles.sort_values("frame").groupby("track_id", sort=True)):
        if len(rows) < 2:
            continue
        frames = rows["frame"].to_numpy()
        gaps = np.diff(frames) - 1
        track = ET.SubElement(all_tracks, "Track", name=f"Track_{int(track_id)}", TRACK_ID=str(int(track_id)),
                              TRACK_INDEX=str(index), NUMBER_SPOTS=str(len(rows)), NUMBER_GAPS=str(int((gaps > 0).sum())),
                              TRACK_START=_num(frames[0] * dt), TRACK_STOP=_num(frames[-1] * dt),
                              TRACK_DURATION=_num((frames[-1] - frames[0]) * dt))
        ids, y, x = rows.index.to_numpy(), rows["y"].to_numpy(), rows["x"].to_numpy()
        for k in range(len(rows) - 1):
            ET.SubElement(track, "Edge", SPOT_SOURCE_ID=str(ids[k]), SPOT_TARGET_ID=str(ids[k + 1]), LINK_COST="0.0",
                          GAP_FRAMES=str(int(gaps[k])), DISPLACEMENT=_num(math.hypot(y[k + 1] - y[k], x[k + 1] - x[k]) * px))
        written.append(int(track_id))
    return written


def _trackmate_settings(root: ET.Element, results: Results, particles: pd.DataFrame) -> None:
    """``Settings`` (image calibration, the crop = whole image) and ``GUIState``."""
    source = Path(results.attrs.get("input_path", ""))
    height, width = results.attrs.get("shape_yx") or (
        results.cell_labels.shape[-2:] if results.cell_labels is not None else (0, 0))
    n_frames = int(results.attrs.get("n_frames") or (particles["frame"].max() + 1 if len(particles) else 0))
    settings = ET.SubElement(root, "Settings")
    ET.SubElement(settings, "ImageData", filename=source.name, folder=str(source.parent), width=str(width),
                  height=str(height), nslices="1", nframes=str(n_frames), pixelwidth=_num(results.pixel_size_um),
                  pixelheight=_num(results.pixel_size_um), voxeldepth="1.0", timeinterval=_num(results.frame_interval_s))
    ET.SubElement(settings, "BasicSettings", xstart="0", xend=str(max(int(width) - 1, 0)), ystart="0",
                  yend=str(max(int(height) - 1, 0)), zstart="0", zend="0", tstart="0", tend=str(max(n_frames - 1, 0)))
    ET.SubElement(root, "GUIState", state="ConfigureViews")


def _num(value) -> str:
    """A float as TrackMate writes it (``NaN`` for missing)."""
    value = float(value)
    return "NaN" if math.isnan(value) else repr(value)


# --- Cell Tracking Challenge -------------------------------------------------------------------


def export_ctc(results: Results, folder: str | Path) -> list[Path]:
    """Write the cell labels in the Cell Tracking Challenge TRA layout.

    Parameters
    ----------
    results : Results
        An opened store with ``labels/cells``.
    folder : str or Path
        Output folder: ``man_track000.tif`` ... (one uint16 label image per frame),
        ``man_track.txt`` and ``cell_ids.csv`` (CTC label -> uptrack ``cell_id``).

    Returns
    -------
    list of Path
        The files written.

    Raises
    ------
    InputError
        If the store has no cell labels, or more labels than uint16 holds.
    """
    labels = results.cell_labels
    if labels is None:
        raise InputError(f"{results.path}: no labels/cells to export (the segment and track_cells stages "
                         "have not run); rerun `uptrack run` on the movie")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n_frames = labels.shape[0]
    ids = [np.unique(np.asarray(labels[t])) for t in range(n_frames)]  # one frame in memory at a time
    segments = _ctc_segments([i[i != BACKGROUND] for i in ids])
    if len(segments) and segments["label"].max() > np.iinfo(np.uint16).max:
        raise InputError(f"{results.path}: {segments['label'].max()} cell labels; the CTC format holds 65535")
    digits = max(3, len(str(n_frames - 1)))
    written = []
    for t in range(n_frames):
        frame = np.asarray(labels[t])
        out = np.zeros(frame.shape, np.uint16)
        for row in segments[(segments["first_frame"] <= t) & (segments["last_frame"] >= t)].itertuples():
            out[frame == row.cell_id] = row.label
        file = folder / f"man_track{t:0{digits}d}.tif"
        tifffile.imwrite(file, out, compression="zlib")
        written.append(file)
    np.savetxt(folder / "man_track.txt", segments[["label", "first_frame", "last_frame", "parent"]].to_numpy(), fmt="%d")
    segments[["label", "cell_id", "first_frame", "last_frame", "parent"]].to_csv(folder / "cell_ids.csv", index=False)
    return [*written, folder / "man_track.txt", folder / "cell_ids.csv"]


def _ctc_segments(ids_per_frame: list[np.ndarray]) -> pd.DataFrame:
    """Unbroken stretches of each cell id: label, cell_id, first_frame, last_frame, parent.

    The first stretch of a cell keeps its id as label; a later one (after frames without the
    cell) gets a new label above every cell id, with the previous stretch as parent.
    """
    present: dict[int, list[int]] = {}
    for t, ids in enumerate(ids_per_frame):
        for cell in ids.tolist():
            present.setdefault(int(cell), []).append(t)
    rows, next_label = [], max(present, default=0) + 1
    for cell in sorted(present):
        frames = np.asarray(present[cell])
        breaks = np.flatnonzero(np.diff(frames) > 1)
        starts, ends = np.r_[0, breaks + 1], np.r_[breaks, len(frames) - 1]
        parent = 0
        for k, (s, e) in enumerate(zip(starts, ends)):
            label = cell if k == 0 else next_label
            next_label += k > 0
            rows.append({"label": label, "cell_id": cell, "first_frame": int(frames[s]), "last_frame": int(frames[e]),
                         "parent": parent})
            parent = label
    return pd.DataFrame(rows, columns=["label", "cell_id", "first_frame", "last_frame", "parent"]).astype("int64")
