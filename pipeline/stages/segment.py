"""Cell segmentation with Cellpose, one frame at a time.

The model is a Cellpose built-in name (``cyto3``, ``nuclei``, ... with Cellpose 3;
``cpsam`` with Cellpose 4) or a path to a weights file, such as the model shipped in
``sample_data/models/``. Built-in weights are never downloaded at run time here: when
they are missing, :func:`load_model` raises an error that says where Cellpose looks
for them and how to pre-fetch them (e.g. on an HPC login node).
"""

from __future__ import annotations

import importlib.metadata
import threading
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field
from skimage.segmentation import relabel_sequential

from pipeline.errors import InputError
from pipeline.params import Params

#: Built-in model names of Cellpose 4 (Cellpose 3's are in ``cellpose.models.MODEL_NAMES``).
CELLPOSE4_MODELS = ("cpsam",)


#: Default steps of Cellpose's flow dynamics per cell diameter (px): a pixel at the boundary
#: travels about a radius, at most 1 px per step, along a curved path.
FLOW_STEPS_PER_DIAMETER = 2.5


class SegmentParams(Params):
    """Parameters of the cell segmentation stage (``segment:`` in a run config)."""

    model: str = Field(
        "cyto3",
        description="Cellpose built-in model name (cyto3, nuclei, ... ; cpsam with "
        "Cellpose 4) or path to a weights file (relative paths are relative to the config file).",
    )
    diameter_um: float | None = Field(
        None,
        gt=0,
        description="Typical cell diameter, µm. None: measured on the movie (Cellpose run at the "
        "model's own diameter, then at the area-weighted median diameter of the cells it found).",
    )
    flow_threshold: float = Field(0.4, ge=0, description="Cellpose flow error threshold.")
    flow_iterations: int | None = Field(
        None,
        ge=1,
        description="Steps of Cellpose's flow dynamics (its niter). None: max(200, 2.5 × the cell diameter "
        "in px), enough for every pixel to reach its cell's centre (steps are ≤ 1 px). Cellpose's own "
        "default, 200 × diameter / the model's diameter, is ~12 diameters for a 17 px model and twice "
        "as slow on large cells with the same masks.",
    )
    cellprob_threshold: float = Field(0.0, description="Cellpose cell probability threshold.")
    min_area_um2: float = Field(
        15.0, ge=0, description="Masks smaller than this area are removed, µm²."
    )
    gpu: Literal["auto", True, False] = Field(
        "auto", description="Run Cellpose on the GPU: auto uses one when torch sees it."
    )
    keyframe_interval: int = Field(
        1, ge=1, description="Run Cellpose on every n-th frame only and carry the masks to the frames between "
        "(watershed seeded by the previous frame's cells, pipeline.stages.propagate); a frame whose carried "
        "masks disagree with its image (a cell's area changes > 15 % or its boundary leaves the stain's "
        "edge) is segmented with Cellpose. 1: every frame."
    )


def cellpose_major_version() -> int:
    """Major version of the installed Cellpose (3 or 4)."""
    return int(importlib.metadata.version("cellpose").split(".")[0])


def _builtin_names() -> tuple[str, ...]:
    if cellpose_major_version() >= 4:
        return CELLPOSE4_MODELS
    from cellpose import models

    return tuple(models.MODEL_NAMES)


def _builtin_weights_file(name: str) -> Path:
    """Where Cellpose keeps the weights of a built-in model (no download)."""
    from cellpose import models

    basename = f"{name}torch_0" if name in ("cyto", "cyto2", "nuclei") else name
    return Path(models.MODEL_DIR) / basename


def _missing_weights_message(name: str, weights: Path) -> str:
    return (
        f"segment.model: Cellpose weights for built-in model '{name}' are not on this "
        f"machine (looked for {weights}). Cellpose downloads them on first use, which needs "
        "internet. Fix: on a machine with internet (e.g. an HPC login node) run\n"
        f"    python -c \"from cellpose import models; models.CellposeModel(pretrained_model='{name}')\"\n"
        f"then copy {weights.name} into {weights.parent} on this machine, or point the "
        "environment variable CELLPOSE_LOCAL_MODELS_PATH at a folder that holds it. "
        "Or set segment.model to the path of a weights file "
        "(e.g. sample_data/models/uptrack_cells_cp3)."
    )


def resolve_model(model: str) -> tuple[str, bool]:
    """Check that a model's weights are on this machine, without downloading.

    Parameters
    ----------
    model
        Built-in Cellpose model name, or path to a weights file.

    Returns
    -------
    (weights, builtin)
        The weights file path (or built-in name) to hand to Cellpose, and whether it
        is a built-in model.

    Raises
    ------
    InputError
        The path does not exist, or the built-in weights are not cached locally.
    """
    path = Path(model).expanduser()
    if not path.is_file() and path.with_name(path.name + ".xz").is_file():
        path = path.with_name(path.name + ".xz")  # shipped compressed (the repository stays small)
    if path.is_file():
        if path.suffix == ".xz":
            from pipeline.weights import unpacked_weights

            path = unpacked_weights(path)
        return str(path), False
    if model in _builtin_names():
        weights = _builtin_weights_file(model)
        if not weights.is_file():
            raise InputError(_missing_weights_message(model, weights))
        return model, True
    raise InputError(
        f"segment.model: '{model}' is neither a weights file that exists nor a built-in "
        f"Cellpose {cellpose_major_version()} model ({', '.join(_builtin_names())}). "
        "Fix the path (relative paths are relative to the config file) or use a built-in name."
    )


def _use_gpu(gpu: Literal["auto", True, False]) -> bool:
    if gpu == "auto":
        import torch

        return bool(torch.cuda.is_available())
    return bool(gpu)


#: One Cellpose call at a time per process: a model object is shared (``load_model`` caches
#: it) and torch's first CPU pass converts modules with TorchScript, which fails when two
#: threads do it at once ("Can't redefine method ... MkldnnBatchNorm": two movies of a batch
#: measuring their cell diameter together in the driver process). Dask workers run one
#: task per thread; frames still run in parallel across worker processes.
_CELLPOSE_LOCK = threading.RLock()


@lru_cache(maxsize=4)
def load_model(model: str, gpu: Literal["auto", True, False] = "auto"):
    """Load a Cellpose model once per process (Dask workers reuse it across frames).

    Parameters
    ----------
    model
        Built-in name or weights path (see :func:`resolve_model`).
    gpu
        Use the GPU; ``"auto"`` when torch sees one.

    Returns
    -------
    cellpose.models.CellposeModel
    """
    weights, builtin = resolve_model(model)
    from cellpose import models

    with _CELLPOSE_LOCK:
        try:
            return models.CellposeModel(gpu=_use_gpu(gpu), pretrained_model=weights)
        except (ValueError, RuntimeError, KeyError) as error:
            if builtin:
                raise
            raise InputError(_incompatible_weights_message(weights, error)) from error


def _incompatible_weights_message(weights: str, error: Exception) -> str:
    """Explain a weights file that the installed Cellpose cannot load (CP3 vs CP4)."""
    installed = importlib.metadata.version("cellpose")
    other = "3 (pip install 'cellpose>=3.1,<4')" if cellpose_major_version() >= 4 else "4 (pip install 'cellpose>=4')"
    return (
        f"segment.model: the weights file {weights} cannot be loaded by the installed Cellpose {installed} "
        f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). Cellpose 3 and 4 "
        "models are not interchangeable; the model shipped in sample_data/models/ is a Cellpose 3 model. "
        f"Fix: install Cellpose {other}, or set segment.model to weights trained with Cellpose "
        f"{cellpose_major_version()} (e.g. retrain with `uptrack train-cellpose`)."
    )


def model_diameter_px(cp_model) -> float:
    """The cell diameter a model was trained for, px (its ``diam_labels``)."""
    diam = getattr(cp_model, "diam_labels", None)
    return float(diam) if diam else float(cp_model.diam_mean)


def estimate_diameter_um(
    cells: np.ndarray, *, pixel_size_um: float, params: SegmentParams, rounds: int = 3
) -> float | None:
    """Measure the typical cell diameter of an image by segmenting it.

    Cellpose segments best when told the cell size. Starting from the size the model
    was trained at, segment, take the typical diameter of the cells found (see
    :func:`typical_diameter_px`) and segment again at that size; stop when the size
    agrees within 10 %.

    Parameters
    ----------
    cells
        Cell-stain image (Y, X).
    pixel_size_um
        Pixel size, µm.
    params
        Segmentation parameters (``diameter_um`` is ignored).
    rounds
        Most refinements after the first segmentation.

    Returns
    -------
    float or None
        Typical cell diameter, µm; None when no cell is found.
    """
    diameter_um = model_diameter_px(load_model(params.model, params.gpu)) * pixel_size_um
    for _ in range(rounds + 1):
        trial = params.model_copy(update={"diameter_um": diameter_um})
        labels = segment_frame(cells, pixel_size_um=pixel_size_um, params=trial)
        found_px = typical_diameter_px(labels)
        if found_px is None:
            return None
        found = found_px * pixel_size_um
        if abs(found / diameter_um - 1) < 0.1:
            return float(found)
        diameter_um = found
    return float(diameter_um)


def typical_diameter_px(labels: np.ndarray) -> float | None:
    """The diameter of the cell a typical cell pixel belongs to, px.

    The area-weighted median of the masks' equivalent diameters (each mask votes with
    its area): small fragments and debris, which can outnumber the cells of a sparse
    field of large cells (real stem cells: 5 cells of ~100 px and a few specks of
    ~8 px, whose plain median is 8 px), carry almost no weight.

    Parameters
    ----------
    labels
        Label image (Y, X), 0 = background.

    Returns
    -------
    float or None
        Diameter, px; None when there is no mask.
    """
    areas = np.bincount(np.asarray(labels).ravel())[1:]
    areas = np.sort(areas[areas > 0])
    if not areas.size:
        return None
    cumulative = np.cumsum(areas)
    median_area = areas[np.searchsorted(cumulative, cumulative[-1] / 2)]
    return float(2 * np.sqrt(median_area / np.pi))


def segment_frame(
    cells: np.ndarray,
    *,
    pixel_size_um: float,
    params: SegmentParams,
    nuclei: np.ndarray | None = None,
) -> np.ndarray:
    """Segment the cells of one frame.

    Parameters
    ----------
    cells
        Cell-stain image, (Y, X), any numeric dtype.
    pixel_size_um
        Pixel size, µm.
    params
        Segmentation parameters.
    nuclei
        Optional nuclear-stain image, (Y, X), used as Cellpose's second channel.

    Returns
    -------
    numpy.ndarray
        Label image (Y, X), uint32, 0 = background, cells numbered 1..N.
    """
    with _CELLPOSE_LOCK:
        return _segment_locked(cells, pixel_size_um=pixel_size_um, params=params, nuclei=nuclei)


def _segment_locked(cells: np.ndarray, *, pixel_size_um: float, params: SegmentParams,
                    nuclei: np.ndarray | None) -> np.ndarray:
    cp_model = load_model(params.model, params.gpu)
    diameter = (
        params.diameter_um / pixel_size_um if params.diameter_um else model_diameter_px(cp_model)
    )
    image = cells.astype(np.float32)
    if cellpose_major_version() >= 4:
        if nuclei is not None:
            image = np.stack([image, nuclei.astype(np.float32)], axis=-1)
        kwargs = {}
    elif nuclei is not None:
        image = np.stack([image, nuclei.astype(np.float32)], axis=0)
        kwargs = {"channels": [1, 2], "channel_axis": 0}
    else:
        kwargs = {"channels": [0, 0]}
    with warnings.catch_warnings():
        # Cellpose 3 builds a sparse tensor per frame and torch warns about it every time
        warnings.filterwarnings("ignore", message="Sparse invariant checks", category=UserWarning)
        masks = _evaluate(cp_model, image, diameter, params, pixel_size_um, kwargs)
    return relabel_sequential(np.asarray(masks, dtype=np.uint32))[0]


def _evaluate(cp_model, image: np.ndarray, diameter: float, params: SegmentParams, pixel_size_um: float,
              kwargs: dict) -> np.ndarray:
    """One Cellpose ``eval`` call with the stage's parameters (diameter in px)."""
    return cp_model.eval(
        image,
        diameter=diameter,
        flow_threshold=params.flow_threshold,
        niter=params.flow_iterations or max(200, int(round(FLOW_STEPS_PER_DIAMETER * diameter))),
        cellprob_threshold=params.cellprob_threshold,
        min_size=max(1, int(round(params.min_area_um2 / pixel_size_um**2))),
        **kwargs,
    )[0]
