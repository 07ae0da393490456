"""napari layers of an uptrack store: what the reader adds and the widgets update.

Every layer is (t, y, x) with the store's physical scale (frame interval in s, pixel
size in µm) and carries ``metadata["uptrack"] = {"store": <path>, "role": <role>}``,
so widgets find the layers of a store without relying on layer names. Roles:
``movie`` (one image layer per channel; ``channel`` also in the metadata),
``cells`` (cell labels), ``particles`` (points) and ``tracks``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from napari.utils import Colormap
from napari.utils.colormaps import CyclicLabelColormap

from pipeline.errors import InputError
from pipeline.io.movie import open_movie
from pipeline.io.results import Results
from pipeline.vocabulary import STATE_COLORS, STATES

KEY = "uptrack"
AXIS_LABELS = ("t", "y", "x")
UNITS = ("second", "micrometer", "micrometer")
#: Track feature that colours tracks: a state's position in STATES mapped to a bin of STATE_COLORMAP.
STATE_LEVEL = "state_level"
STATE_COLORMAP = Colormap([STATE_COLORS[s] for s in STATES], controls=np.linspace(0, 1, len(STATES) + 1),
                          interpolation="zero", name="uptrack_states")
#: Muted cell colours, so that cells do not compete with the state colours.
CELL_COLORMAP = CyclicLabelColormap(colors=["transparent", "#6a5acd", "#3c8d6e", "#8b6d3c", "#4f6d9c", "#8b4f7a"],
                                    name="uptrack_cells")
#: Columns of the particles table shown as point features.
POINT_FEATURES = ["track_id", "cell_id", "state", "zone", "mass"]


def common_kwargs(results: Results, role: str, name: str, **extra) -> dict:
    """Layer keyword arguments shared by every layer of a store."""
    dt, px = results.frame_interval_s, results.pixel_size_um
    return {
        "name": f"{results.path.stem} {name}",
        "scale": (dt, px, px),
        "axis_labels": AXIS_LABELS,
        "units": UNITS,
        "metadata": {KEY: {"store": str(results.path), "role": role, **extra}},
    }


def movie_layers(results: Results) -> list[tuple]:
    """One image layer per channel of the store's input movie (lazy), or none if it is not found.

    The movie is looked for at the input path recorded in the store, then next to the
    store (a folder moved with its movie). When neither exists, a warning says so and
    how to fix it.
    """
    recorded = Path(results.attrs["input_path"])
    found = next((p for p in (recorded, results.path.parent / recorded.name) if p.exists()), None)
    if found is None:
        warnings.warn(
            f"{results.path}: the movie it was made from is not at {recorded} (moved or deleted?); "
            "showing the results without it. Put the movie back, or next to the store, and open "
            "the store again.",
            stacklevel=2,
        )
        return []
    try:
        movie = open_movie(found, pixel_size_um=results.pixel_size_um, frame_interval_s=results.frame_interval_s)
    except InputError as exc:
        warnings.warn(f"{results.path}: cannot open its movie ({exc}); showing the results without it.",
                      stacklevel=2)
        return []
    channels = results.attrs.get("config", {}).get("input", {}).get("channels", {})
    particle_channel = _channel_or_none(movie, channels.get("particles"))
    layers = []
    for index, channel in enumerate(movie.channel_names):
        data = movie.data[:, index, 0]
        is_particles = index == particle_channel
        low, high = np.percentile(np.asarray(data[data.shape[0] // 2]), (0.5, 99.9 if is_particles else 99.5))
        kwargs = common_kwargs(results, "movie", f"movie: {channel}", channel=channel, path=str(found),
                               particles=is_particles)
        kwargs.update(
            colormap="gray",
            blending="additive",
            opacity=1.0 if is_particles else 0.6,
            contrast_limits=(float(low), float(max(high, low + 1))),
        )
        layers.append((data, kwargs, "image"))
    return layers


def _channel_or_none(movie, channel) -> int | None:
    """Index of a configured channel, or None if it is not set or not in the movie."""
    if channel is None:
        return None
    try:
        return movie.channel_index(channel)
    except InputError:
        return None


def labels_layer(results: Results) -> tuple | None:
    """The cell label image (lazy) as a labels layer, or None if the store has none."""
    if results.cell_labels is None:
        return None
    kwargs = common_kwargs(results, "cells", "cell labels")
    kwargs.update(colormap=CELL_COLORMAP, opacity=0.35)
    return results.cell_labels, kwargs, "labels"


def points_layer(results: Results) -> tuple:
    """Detections as points (t, y, x) coloured by state, one per row of the particles table."""
    particles = results.particles
    kwargs = common_kwargs(results, "particles", "particles")
    kwargs.update(
        features=point_features(particles),
        face_color="state",
        face_color_cycle=dict(STATE_COLORS),
        symbol="ring",
        size=6,
        border_width=0,
    )
    return point_data(particles), kwargs, "points"


def point_data(particles: pd.DataFrame) -> np.ndarray:
    """(N, 3) frame, y, x of the detections."""
    return particles[["frame", "y", "x"]].to_numpy(float)


def point_features(particles: pd.DataFrame) -> pd.DataFrame:
    """Point features: :data:`POINT_FEATURES` of the detections."""
    return particles[POINT_FEATURES].reset_index(drop=True)


def update_points(layer, particles: pd.DataFrame) -> None:
    """Show a new particles table (e.g. corrected states) in a points layer made by `points_layer`."""
    layer.data = point_data(particles)
    layer.features = point_features(particles)
    layer.refresh_colors()


def tracks_layer(results: Results) -> tuple:
    """Tracks (id, t, y, x) coloured by the state at each detection."""
    kwargs = common_kwargs(results, "tracks", "tracks")
    data, features = track_data(results.particles)
    kwargs.update(features=features, color_by=STATE_LEVEL, colormaps_dict={STATE_LEVEL: STATE_COLORMAP},
                  tail_length=30, tail_width=3, blending="translucent")
    return data, kwargs, "tracks"


def update_tracks(layer, particles: pd.DataFrame, track_ids: np.ndarray | None = None) -> None:
    """Show the tracks ``track_ids`` (all if None) of a particles table in a layer made by `tracks_layer`.

    napari cannot draw a tracks layer without tracks, so with none to show the layer is
    hidden (and shown again when there are).
    """
    data, features = track_data(particles, track_ids)
    meta = layer.metadata[KEY]
    if len(data) == 0:
        meta["hidden_empty"] = True
        layer.visible = False
        return
    if meta.pop("hidden_empty", False):
        layer.visible = True
    layer.data = data
    layer.features = features
    layer.color_by = STATE_LEVEL


def track_data(particles: pd.DataFrame, track_ids: np.ndarray | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """Tracks layer data (N, 4: id, frame, y, x, sorted by id and frame) and its features."""
    if track_ids is not None:
        particles = particles[particles["track_id"].isin(track_ids)]
    p = particles.sort_values(["track_id", "frame"], kind="stable")
    data = p[["track_id", "frame", "y", "x"]].to_numpy(float)
    code = pd.Categorical(p["state"], categories=STATES).codes
    features = pd.DataFrame({"state": p["state"].to_numpy(), STATE_LEVEL: (code + 0.5) / len(STATES)})
    return data, features


def store_layers(viewer, store: Path | str) -> dict[str, list]:
    """The viewer's layers of one store, by role."""
    found: dict[str, list] = {}
    for layer in viewer.layers:
        meta = layer.metadata.get(KEY, {})
        if meta.get("store") == str(store):
            found.setdefault(meta["role"], []).append(layer)
    return found


def movie_path(layer) -> str | None:
    """The file an image layer was read from (the movie of an uptrack store's layer), or None."""
    return layer.metadata.get(KEY, {}).get("path") or layer.source.path


def open_stores(viewer) -> list[Path]:
    """Stores with layers in the viewer, in the order their first layers appear."""
    stores = dict.fromkeys(layer.metadata[KEY]["store"] for layer in viewer.layers if KEY in layer.metadata)
    return [Path(store) for store in stores]
