"""Cell inspector: one cell's kinetics, tracks and events, filters, and the correction panel.

Works on the last uptrack store opened in the viewer. Pick a cell in the list or
click it in the viewer (clicking near a particle also selects its track). The dock
shows the cell's counts per state over time, cumulative internalization and
release, and its rates with confidence intervals next to the movie's pooled ones;
the tables list its tracks and events. Clicking a track or an event moves the
viewer to that frame, centred on the particle. Filters (states, event kind,
minimum track length) choose which tracks the viewer and the tables show.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QSpinBox,
    QTableWidget,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from napari_uptrack._curation_widget import CorrectionPanel
from napari_uptrack._helpers import fill_table, theme_rc
from napari_uptrack._layers import open_stores, store_layers, update_points, update_tracks
from pipeline.eval.report import draw_cell_kinetics
from pipeline.io.results import Results, load_results, read_table
from pipeline.io.store import has_table
from pipeline.stages.motion import MOTION_CLASSES, motion_segments
from pipeline.vocabulary import EVENTS, STATE_COLORS, STATES

ANY_EVENT = "any event"
ANY_MOTION = "any motion"
#: A click selects the nearest particle of the current frame within this distance, px.
PICK_RADIUS_PX = 5.0
_TRACK_COLUMNS = ["track_id", "first_frame", "last_frame", "n_detections", "final_state"]
_EVENT_COLUMNS = ["frame", "time_s", "kind", "track_id"]


class CellInspector(QWidget):
    """Dock widget: inspect a cell's kinetics, tracks and events; filter and correct tracks.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
    """

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.results: Results | None = None
        self.visible_tracks = np.zeros(0, np.int64)
        self.cell_tracks = pd.DataFrame(columns=_TRACK_COLUMNS)
        self.cell_events = pd.DataFrame(columns=_EVENT_COLUMNS)

        self.store_label = QLabel("no uptrack results open: open a <name>.zarr store", wordWrap=True)
        self.cell_box = QComboBox()
        self.cell_box.currentTextChanged.connect(self._on_cell_chosen)
        self.state_boxes = {}
        states = QHBoxLayout()
        for state in STATES:
            box = QCheckBox(state.replace("_", " "), checked=True)
            box.setStyleSheet(f"color: {STATE_COLORS[state]}")
            box.toggled.connect(self.apply_filters)
            self.state_boxes[state] = box
            states.addWidget(box)
        self.kind_box = QComboBox()
        self.kind_box.addItems([ANY_EVENT, *EVENTS])
        self.kind_box.currentTextChanged.connect(self.apply_filters)
        self.min_length = QSpinBox(minimum=1, maximum=100_000)
        self.min_length.valueChanged.connect(self.apply_filters)
        self.motion_box = QComboBox()
        self.motion_box.addItems([ANY_MOTION, *MOTION_CLASSES])
        self.motion_box.setToolTip("tracks with at least one segment of this motion class (MSD: D and exponent)")
        self.motion_box.currentTextChanged.connect(self.apply_filters)
        self.motion = pd.DataFrame(columns=["track_id", "motion"])
        filters = QGroupBox("Show tracks")
        form = QGridLayout(filters)
        form.addLayout(states, 0, 0, 1, 4)
        for column, widget in enumerate((QLabel("with"), self.kind_box, QLabel("min. detections"), self.min_length)):
            form.addWidget(widget, 1, column)
        form.addWidget(QLabel("motion"), 2, 0)
        form.addWidget(self.motion_box, 2, 1)

        self.figure = Figure(figsize=(4.5, 5.5), layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(400)
        self.tracks_table = QTableWidget()
        self.tracks_table.cellClicked.connect(self._on_track_clicked)
        self.events_table = QTableWidget()
        self.events_table.cellClicked.connect(self._on_event_clicked)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.canvas, "Kinetics")
        self.tabs.addTab(self.tracks_table, "Tracks")
        self.tabs.addTab(self.events_table, "Events")
        self.correction = CorrectionPanel(on_saved=self.reload)

        layout = QVBoxLayout(self)
        layout.addWidget(self.store_label)
        cell_row = QHBoxLayout()
        cell_row.addWidget(QLabel("cell"))
        cell_row.addWidget(self.cell_box, 1)
        layout.addLayout(cell_row)
        layout.addWidget(filters)
        layout.addWidget(self.tabs, 1)
        layout.addWidget(self.correction)

        self.viewer.layers.events.inserted.connect(self._sync_store)
        self.viewer.layers.events.removed.connect(self._sync_store)
        self.viewer.mouse_drag_callbacks.append(self._on_click)
        self._sync_store()

    # --- store ------------------------------------------------------------------------

    @property
    def cell_id(self) -> int | None:
        """The cell shown, or None."""
        text = self.cell_box.currentText()
        return int(text) if text else None

    def _sync_store(self, event=None) -> None:
        """Follow the last store opened in the viewer."""
        stores = open_stores(self.viewer)
        path = stores[-1] if stores else None
        if path != (self.results.path if self.results else None):
            self.load(path)

    def load(self, path: Path | None) -> None:
        """Show the store at ``path`` (its curated tables when it has corrections); None clears."""
        self.results = None if path is None else load_results(path, curated=True)
        self.motion = self._motion()
        self.correction.set_store(path)
        self.cell_box.blockSignals(True)
        self.cell_box.clear()
        if self.results is not None:
            self.cell_box.addItems([str(c) for c in self.results.cells["cell_id"]])
        self.cell_box.blockSignals(False)
        self._describe_store()
        self.apply_filters()

    def reload(self) -> None:
        """Re-read the store after a correction; update the layers, the plot and the tables."""
        self.results = load_results(self.results.path, curated=True)
        self.motion = self._motion()
        for layer in store_layers(self.viewer, self.results.path).get("particles", []):
            update_points(layer, self.results.particles)
        self._describe_store()
        self.apply_filters()

    def _motion(self) -> pd.DataFrame:
        """Motion class of every track segment: the store's table, or measured here (curated or older stores)."""
        results = self.results
        if results is None:
            return pd.DataFrame(columns=["track_id", "motion"])
        if has_table(results.path, "motion") and not results.curation_version:
            return read_table(results.path, "motion")
        return motion_segments(results.particles, pixel_size_um=results.pixel_size_um,
                               frame_interval_s=results.frame_interval_s)

    def _describe_store(self) -> None:
        if self.results is None:
            self.store_label.setText("no uptrack results open: open a <name>.zarr store")
            return
        version = self.results.curation_version
        curated = f", curated (v{version})" if version else ""
        self.store_label.setText(f"{self.results.path.name}: {len(self.results.cells)} cells, "
                                 f"{len(self.results.tracks)} tracks{curated}")

    # --- filters ------------------------------------------------------------------------

    def apply_filters(self, *_) -> None:
        """Show only the tracks that pass the filters, in the viewer and in the tables."""
        if self.results is None:
            return
        tracks, events = self.results.tracks, self.results.events
        states = [s for s, box in self.state_boxes.items() if box.isChecked()]
        keep = (tracks[[f"n_{s}" for s in states]].sum(axis=1) > 0) & (tracks["n_detections"] >= self.min_length.value())
        kind = self.kind_box.currentText()
        if kind != ANY_EVENT:
            keep &= tracks["track_id"].isin(events.loc[events["kind"] == kind, "track_id"])
        motion = self.motion_box.currentText()
        if motion != ANY_MOTION:
            keep &= tracks["track_id"].isin(self.motion.loc[self.motion["motion"] == motion, "track_id"])
        self.visible_tracks = tracks.loc[keep, "track_id"].to_numpy()
        layers = store_layers(self.viewer, self.results.path)
        shown = self.results.particles["track_id"].isin(self.visible_tracks).to_numpy()
        for layer in layers.get("particles", []):
            layer.shown = shown
        for layer in layers.get("tracks", []):
            update_tracks(layer, self.results.particles, self.visible_tracks)
        if self.cell_id is not None:
            self.show_cell(self.cell_id)

    # --- one cell -------------------------------------------------------------------------

    def _on_cell_chosen(self, text: str) -> None:
        if text:
            self.show_cell(int(text))

    def select_cell(self, cell_id: int) -> None:
        """Choose a cell in the list (shows it)."""
        self.cell_box.setCurrentText(str(cell_id))

    def show_cell(self, cell_id: int) -> None:
        """Plot the cell's kinetics and list its (filtered) tracks and events."""
        results = self.results
        events = results.events
        events = events[(events["cell_id"] == cell_id) & events["track_id"].isin(self.visible_tracks)]
        kind = self.kind_box.currentText()
        if kind != ANY_EVENT:
            events = events[events["kind"] == kind]
        tracks = results.tracks
        mine = (tracks["cell_id"] == cell_id) | tracks["track_id"].isin(events["track_id"])
        self.cell_tracks = tracks[mine & tracks["track_id"].isin(self.visible_tracks)].reset_index(drop=True)
        self.cell_events = events.reset_index(drop=True)
        fill_table(self.tracks_table, self.cell_tracks[_TRACK_COLUMNS])
        fill_table(self.events_table, self.cell_events[_EVENT_COLUMNS])
        self.tabs.setTabText(1, f"Tracks ({len(self.cell_tracks)})")
        self.tabs.setTabText(2, f"Events ({len(self.cell_events)})")
        cell = results.cells.set_index("cell_id").loc[cell_id]
        kinetics = results.kinetics.sel(cell_id=cell_id).load()
        with matplotlib.rc_context(theme_rc(self.viewer.theme)):
            draw_cell_kinetics(self.figure, cell_id, kinetics, cell, results.movie.iloc[0])
        self.canvas.draw_idle()

    # --- navigation -------------------------------------------------------------------------

    def _on_track_clicked(self, row: int, column: int) -> None:
        track = self.cell_tracks.iloc[row]
        self.go_to(int(track["track_id"]), int(track["first_frame"]))

    def _on_event_clicked(self, row: int, column: int) -> None:
        event = self.cell_events.iloc[row]
        self.go_to(int(event["track_id"]), int(event["frame"]))

    def go_to(self, track_id: int, frame: int) -> None:
        """Show ``frame``, centred on the track's particle there; select the track for correction."""
        particles = self.results.particles
        rows = np.flatnonzero((particles["track_id"] == track_id).to_numpy() & (particles["frame"] == frame).to_numpy())
        px, dt = self.results.pixel_size_um, self.results.frame_interval_s
        self.viewer.dims.set_point(0, frame * dt)
        if len(rows):
            y, x = particles.loc[rows[0], ["y", "x"]]
            self.viewer.camera.center = (y * px, x * px)
            for layer in store_layers(self.viewer, self.results.path).get("particles", []):
                layer.selected_data = {int(rows[0])}
        self._select_track(track_id)

    def _select_track(self, track_id: int) -> None:
        track = self.results.tracks.set_index("track_id").loc[track_id]
        self.correction.select_track(track_id, int(track["first_frame"]), int(track["last_frame"]))

    def _on_click(self, viewer, event):
        """A click (not a drag) in the viewer picks the particle under it, or else the cell."""
        dragged = False
        yield
        while event.type == "mouse_move":
            dragged = True
            yield
        if not dragged and self.results is not None:
            self.pick(event.position)

    def pick(self, position) -> None:
        """Select the particle (its track and cell) or the cell at a world position (t, y, x)."""
        px, dt = self.results.pixel_size_um, self.results.frame_interval_s
        frame, y, x = round(position[-3] / dt), position[-2] / px, position[-1] / px
        particles = self.results.particles
        here = particles[(particles["frame"] == frame) & particles["track_id"].isin(self.visible_tracks)]
        distance = np.hypot(here["y"] - y, here["x"] - x)
        if len(here) and distance.min() <= PICK_RADIUS_PX:
            particle = here.loc[distance.idxmin()]
            if particle["cell_id"]:
                self.select_cell(int(particle["cell_id"]))
            self._select_track(int(particle["track_id"]))
            return
        cells = store_layers(self.viewer, self.results.path).get("cells", [])
        cell = cells[0].get_value(position, world=True) if cells else None
        if cell:
            self.select_cell(int(cell))
