"""Reader: an uptrack results store (``<name>.zarr``) as napari layers.

Layers, all (t, y, x) with the store's scale (s, µm, µm): the raw movie channels
(read lazily from the input path recorded in the store), the cell labels (lazy),
the particles as points and the tracks, both coloured by state
(:data:`pipeline.vocabulary.STATE_COLORS`). States are the curated ones when the
store holds corrections (`pipeline.io.curation`).
"""

from __future__ import annotations

from pathlib import Path

from napari_uptrack._layers import labels_layer, movie_layers, points_layer, tracks_layer
from pipeline.errors import InputError
from pipeline.io.results import load_results
from pipeline.io.store import read_attrs


def get_reader(path):
    """The store reader if ``path`` is one complete uptrack store, else None (another reader may take it)."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    try:
        attrs = read_attrs(path)
    except InputError:
        return None
    return read_store if attrs.get("complete") else None


def read_store(path) -> list[tuple]:
    """Layer data of a store: movie channels, cell labels, particles and tracks.

    Parameters
    ----------
    path : str, Path or list of one of them
        A complete uptrack store.

    Returns
    -------
    list of (data, kwargs, layer_type)
    """
    if isinstance(path, list):
        path = path[0]
    results = load_results(Path(path), curated=True)
    layers = [*movie_layers(results), labels_layer(results), points_layer(results), tracks_layer(results)]
    return [layer for layer in layers if layer is not None]
