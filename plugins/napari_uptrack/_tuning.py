"""Detection tuning: preview uptrack's particle detection live on the current frame; save a run config.

Choose the particle channel (an image layer, (t, y, x), scaled in µm as the uptrack
reader sets it), the spot diameter, the threshold ``min_snr`` and the separation;
the detections of the current frame appear as rings (as trackpy's ``annotate``
draws them) and update when a parameter or the frame changes. The histogram shows
the mass of every candidate found at a permissive threshold, the ones kept at
``min_snr`` highlighted and a line at the dimmest kept one: real particles and
noise peaks form separate modes, and the threshold belongs between them. *Save
config* writes a YAML config for ``uptrack run`` with these detection parameters
(the rest from the open store's config, or defaults).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import yaml
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from napari.layers import Image
from napari.qt.threading import create_worker
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_uptrack._helpers import theme_rc
from napari_uptrack._layers import KEY, movie_path
from pipeline.errors import InputError
from pipeline.io.results import load_results
from pipeline.run.config import config_from_dict, dump_config
from pipeline.stages.detect import DetectParams, detect_frame
from pipeline.vocabulary import STATE_COLORS

#: Threshold (min_snr) of the permissive detection whose candidates fill the histogram.
HISTOGRAM_MIN_SNR = 2.0
PREVIEW_LAYER = "detection preview"
#: Wait after the last change before detecting again, ms.
DEBOUNCE_MS = 250


def detect_preview(data, frame: int, pixel_size_um: float, params: DetectParams):
    """Detections of one frame at ``params`` and at the histogram's permissive threshold.

    Returns
    -------
    detections, candidates : DataFrame
        Tables of :func:`pipeline.stages.detect.detect_frame`.
    """
    image = np.asarray(data[frame])
    detections = detect_frame(image, frame, pixel_size_um=pixel_size_um, params=params)
    permissive = params.model_copy(update={"min_snr": min(params.min_snr, HISTOGRAM_MIN_SNR)})
    candidates = detect_frame(image, frame, pixel_size_um=pixel_size_um, params=permissive)
    return detections, candidates


class DetectionTuning(QWidget):
    """Dock widget: tune ``detect:`` parameters on the open movie and save them as a run config.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
    """

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.worker = None
        self._stale = False
        defaults = DetectParams()

        self.layer_box = QComboBox()
        self.diameter = QDoubleSpinBox(minimum=0.05, maximum=20.0, singleStep=0.05, decimals=2,
                                       value=defaults.spot_diameter_um, suffix=" µm")
        self.min_snr = QDoubleSpinBox(minimum=0.5, maximum=100.0, singleStep=0.5, decimals=1, value=defaults.min_snr)
        self.auto_separation = QCheckBox("auto (one PSF sigma)", checked=defaults.separation_um is None)
        self.separation = QDoubleSpinBox(minimum=0.0, maximum=20.0, singleStep=0.05, decimals=2, value=0.2,
                                         suffix=" µm")
        self.separation.setEnabled(not self.auto_separation.isChecked())
        self.auto_separation.toggled.connect(lambda auto: self.separation.setEnabled(not auto))
        separation = QHBoxLayout()
        separation.addWidget(self.separation)
        separation.addWidget(self.auto_separation)
        self.live = QCheckBox("live preview", checked=True)
        preview_button = QPushButton("Preview this frame")
        preview_button.clicked.connect(self.preview)
        self.figure = Figure(figsize=(4, 2.6), layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(220)
        save_button = QPushButton("Save config…")
        save_button.clicked.connect(self._ask_and_save)
        self.status = QLabel(wordWrap=True)

        form = QFormLayout()
        form.addRow("particle channel", self.layer_box)
        form.addRow("spot_diameter_um", self.diameter)
        form.addRow("min_snr", self.min_snr)
        form.addRow("separation_um", separation)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        row = QHBoxLayout()
        row.addWidget(self.live)
        row.addWidget(preview_button)
        layout.addLayout(row)
        layout.addWidget(self.canvas, 1)
        layout.addWidget(save_button)
        layout.addWidget(self.status)

        self.timer = QTimer(singleShot=True, interval=DEBOUNCE_MS)
        self.timer.timeout.connect(self.preview)
        for signal in (self.diameter.valueChanged, self.min_snr.valueChanged, self.separation.valueChanged,
                       self.auto_separation.toggled, self.layer_box.currentTextChanged):
            signal.connect(self._changed)
        self.viewer.dims.events.current_step.connect(self._changed)
        self.viewer.layers.events.inserted.connect(self._list_layers)
        self.viewer.layers.events.removed.connect(self._list_layers)
        self._list_layers()

    # --- inputs ---------------------------------------------------------------------------

    def _list_layers(self, event=None) -> None:
        """Offer the (t, y, x) image layers; pick an uptrack particle channel first, with its store's params."""
        images = [layer for layer in self.viewer.layers
                  if isinstance(layer, Image) and layer.ndim == 3 and layer.name != PREVIEW_LAYER]
        current = self.layer_box.currentText()
        self.layer_box.blockSignals(True)
        self.layer_box.clear()
        self.layer_box.addItems([layer.name for layer in images])
        particles = [layer.name for layer in images if layer.metadata.get(KEY, {}).get("particles")]
        chosen = current if current in [layer.name for layer in images] else (particles or [""])[-1]
        self.layer_box.setCurrentText(chosen)
        self.layer_box.blockSignals(False)
        if chosen != current and chosen in particles:
            self._load_store_params()

    def _load_store_params(self) -> None:
        """Start from the detection parameters of the chosen layer's store."""
        params = DetectParams(**self._store_config().get("detect", {}))
        self.diameter.setValue(params.spot_diameter_um)
        self.min_snr.setValue(params.min_snr)
        self.auto_separation.setChecked(params.separation_um is None)
        if params.separation_um is not None:
            self.separation.setValue(params.separation_um)

    def _store_config(self) -> dict:
        """The run config recorded in the chosen layer's store ({} if it is not from a store)."""
        store = self.layer.metadata.get(KEY, {}).get("store") if self.layer else None
        return load_results(store).attrs.get("config", {}) if store else {}

    @property
    def layer(self):
        """The chosen image layer, or None."""
        name = self.layer_box.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def params(self) -> DetectParams:
        """The detection parameters: the store's, with the widget's diameter, threshold and separation."""
        return DetectParams(**{
            **self._store_config().get("detect", {}),
            "spot_diameter_um": self.diameter.value(),
            "min_snr": self.min_snr.value(),
            "separation_um": None if self.auto_separation.isChecked() else self.separation.value(),
        })

    # --- preview ------------------------------------------------------------------------------

    def _changed(self, *_) -> None:
        if self.live.isChecked():
            self.timer.start()

    def preview(self) -> None:
        """Detect on the current frame in a worker thread; show rings and the histogram when done."""
        layer = self.layer
        if layer is None:
            self.status.setText("open a movie (or an uptrack store) first")
            return
        if self.worker is not None:
            self._stale = True
            return
        frame = int(round(layer.world_to_data(self.viewer.dims.point[-layer.ndim:])[0]))
        frame = min(max(frame, 0), layer.data.shape[0] - 1)
        pixel_size_um = float(layer.scale[-1])
        self.status.setText(f"detecting on frame {frame} (pixel size {pixel_size_um:g} µm)…")
        self.worker = create_worker(detect_preview, layer.data, frame, pixel_size_um, self.params(),
                                    _start_thread=False)
        self.worker.returned.connect(lambda result: self._show(layer, frame, *result))
        self.worker.errored.connect(lambda exc: self.status.setText(f"detection failed: {exc}"))
        self.worker.finished.connect(self._finished)
        self.worker.start()

    def _finished(self) -> None:
        self.worker = None
        if self._stale:
            self._stale = False
            self.preview()

    def _show(self, layer, frame: int, detections, candidates) -> None:
        rings = detections[["frame", "y", "x"]].to_numpy(float)
        size = 2 * self.diameter.value() / float(layer.scale[-1]) + 2
        if PREVIEW_LAYER in self.viewer.layers:
            preview = self.viewer.layers[PREVIEW_LAYER]
            preview.data = rings
            preview.size = size
        else:
            self.viewer.add_points(rings, name=PREVIEW_LAYER, scale=layer.scale, units=layer.units,
                                   axis_labels=layer.axis_labels, symbol="ring", face_color="yellow", size=size,
                                   border_width=0)
        with matplotlib.rc_context(theme_rc(self.viewer.theme)):
            self._plot(detections, candidates)
        self.canvas.draw_idle()
        self.status.setText(f"frame {frame}: {len(detections)} detections at min_snr {self.min_snr.value():g}")

    def _plot(self, detections, candidates) -> None:
        self.figure.clear()
        self.figure.set_facecolor(matplotlib.rcParams["figure.facecolor"])
        ax = self.figure.subplots()
        masses = candidates["mass"].to_numpy()
        if len(masses) == 0:
            ax.set_title("no candidates on this frame")
            return
        bins = np.geomspace(masses.min(), masses.max(), 40) if masses.max() > masses.min() else 10
        ax.hist(masses, bins=bins, color="#777777",
                label=f"candidates (min_snr {min(self.min_snr.value(), HISTOGRAM_MIN_SNR):g})")
        ax.hist(detections["mass"], bins=bins, color=STATE_COLORS["vesicular"], label="detected")
        if len(detections):
            ax.axvline(detections["mass"].min(), color=STATE_COLORS["membrane_bound"], label="dimmest detected")
        ax.set_xscale("log")
        ax.set_xlabel("mass (fitted flux, image units)")
        ax.set_ylabel("spots")
        ax.legend(fontsize=7)

    # --- config ---------------------------------------------------------------------------------

    def _ask_and_save(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save uptrack config", "tuned.yaml", "YAML (*.yaml *.yml)")
        if path:
            try:
                self.save_config(Path(path))
            except InputError as exc:
                self.status.setText(str(exc))

    def save_config(self, path: Path) -> Path:
        """Write a run config for ``uptrack run`` with the chosen detection parameters.

        The config is the chosen layer's store config (or a minimal one), with the
        movie and particle channel of the layer and the widget's ``detect`` values;
        it is validated with `pipeline.run.config` before it is written.

        Returns
        -------
        Path
            ``path``.

        Raises
        ------
        InputError
            If the layer has no file, or the config does not validate.
        """
        layer = self.layer
        meta = layer.metadata.get(KEY, {})
        movie = movie_path(layer)
        if movie is None:
            raise InputError(f"layer {layer.name!r} was not read from a file; open the movie from its file")
        raw = self._store_config()
        channels = raw.get("input", {}).get("channels", {})
        if "channel" in meta:
            channels = {**channels, "particles": meta["channel"]}
        raw = {**raw, "input": {**raw.get("input", {}), "path": str(movie), "channels": channels},
               "detect": self.params().model_dump(mode="json")}
        config = config_from_dict(raw, base=path.resolve().parent, source=str(path))
        path.write_text(yaml.safe_dump(dump_config(config), sort_keys=False))
        self.status.setText(f"saved {path}: run it with  uptrack run {path}")
        return path
