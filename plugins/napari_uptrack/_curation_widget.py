"""Review and correct: change a track's state over a frame range, or mark it as a false track.

The panel (part of the cell inspector) edits the full set of corrections of a
store; *Save* writes it as a new version of the store's curation record and
recomputes the curated tables and kinetics (`pipeline.io.curation`), exactly as
``uptrack kinetics STORE`` does. The pipeline's own output is never changed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox, QGridLayout, QGroupBox, QLabel, QLineEdit, QPushButton, QSpinBox, QTableWidget

from napari_uptrack._helpers import fill_table
from pipeline.errors import InputError
from pipeline.io.curation import curation_versions, empty_corrections, read_corrections, save_corrections
from pipeline.run.curate import apply_curation
from pipeline.vocabulary import STATES

FALSE_TRACK = "false track"

log = logging.getLogger(__name__)


class CorrectionPanel(QGroupBox):
    """Corrections of one store: add, remove, save as a new curation version.

    Parameters
    ----------
    on_saved : callable
        Called with no arguments after a save, once the curated tables are written.
    """

    #: Emitted with the curation version once a save is written and shown.
    saved = Signal(int)

    def __init__(self, on_saved: Callable[[], None]):
        super().__init__("Review and correct")
        self.on_saved = on_saved
        self.path: Path | None = None
        self.corrections = empty_corrections()

        self.track = QSpinBox(maximum=2**31 - 1)
        self.state = QComboBox()
        self.state.addItems([*STATES, FALSE_TRACK])
        self.first_frame = QSpinBox(maximum=2**31 - 1)
        self.last_frame = QSpinBox(maximum=2**31 - 1)
        add_button = QPushButton("Add")
        add_button.clicked.connect(self.add_correction)
        self.table = QTableWidget()
        self.table.setMaximumHeight(90)
        remove_button = QPushButton("Remove selected")
        remove_button.clicked.connect(self.remove_selected)
        self.note = QLineEdit(placeholderText="note saved with this version (optional)")
        save_button = QPushButton("Save and recompute kinetics")
        save_button.clicked.connect(self.save)
        self.status = QLabel(wordWrap=True)

        layout = QGridLayout(self)
        for column, widget in enumerate((QLabel("track"), self.track, QLabel("set to"), self.state)):
            layout.addWidget(widget, 0, column)
        for column, widget in enumerate((QLabel("frames"), self.first_frame, QLabel("to"), self.last_frame)):
            layout.addWidget(widget, 1, column)
        layout.addWidget(add_button, 1, 4)
        layout.addWidget(self.table, 2, 0, 1, 5)
        layout.addWidget(self.note, 3, 0, 1, 3)
        layout.addWidget(remove_button, 3, 3)
        layout.addWidget(save_button, 3, 4)
        layout.addWidget(self.status, 4, 0, 1, 5)
        self.setEnabled(False)

    def set_store(self, path: Path | None) -> None:
        """Edit the latest corrections of the store at ``path`` (None: no store, panel disabled)."""
        self.path = path
        self.setEnabled(path is not None)
        self.corrections = empty_corrections() if path is None else read_corrections(path)
        versions = [] if path is None else curation_versions(path)
        self.status.setText(f"curation v{versions[-1]['version']} applied" if versions else "no corrections saved")
        self._show()

    def select_track(self, track_id: int, first_frame: int, last_frame: int) -> None:
        """Prefill the track and its frame range."""
        self.track.setValue(track_id)
        self.first_frame.setValue(first_frame)
        self.last_frame.setValue(last_frame)

    def add_correction(self) -> None:
        """Append the correction described by the form (saved only by `save`)."""
        false_track = self.state.currentText() == FALSE_TRACK
        row = pd.DataFrame({
            "track_id": [self.track.value()],
            "first_frame": [self.first_frame.value()],
            "last_frame": [self.last_frame.value()],
            "action": ["false_track" if false_track else "set_state"],
            "state": ["" if false_track else self.state.currentText()],
        }).astype(self.corrections.dtypes.to_dict())
        self.corrections = pd.concat([self.corrections, row], ignore_index=True)
        self.status.setText(f"corrections: {len(self.corrections)}, not saved yet")
        self._show()

    def remove_selected(self) -> None:
        """Drop the selected rows of the corrections table."""
        rows = sorted({index.row() for index in self.table.selectedIndexes()})
        self.corrections = self.corrections.drop(index=rows).reset_index(drop=True)
        self._show()

    def save(self):
        """Save the corrections as a new curation version and recompute the curated tables, in a
        background thread (a large store takes seconds); the panel is disabled meanwhile and
        ``saved`` is emitted with the version once the tables are written and shown.

        Returns
        -------
        napari.qt.threading.WorkerBase
            The running worker.
        """
        from napari.qt.threading import thread_worker

        path, corrections, note = self.path, self.corrections.copy(), self.note.text()

        @thread_worker
        def write() -> tuple[int | None, str]:
            """(version, "") once saved, (None, why) if not."""
            try:
                version = save_corrections(path, corrections, note=note)
                apply_curation(path, version)
                return version, ""
            except InputError as exc:  # the user's to fix: shown in the panel
                log.warning("corrections not saved: %s", exc)
                return None, str(exc)
            except Exception as exc:  # a bug: shown in the panel, the traceback in the log
                log.exception("saving corrections to %s failed", path)
                return None, f"not saved: {type(exc).__name__}: {exc}"

        worker = write()
        worker.returned.connect(self._done)
        self.setEnabled(False)
        self.status.setText(f"saving {len(corrections)} corrections and recomputing kinetics ...")
        worker.start()
        return worker

    def _done(self, result: tuple[int | None, str]) -> None:
        self.setEnabled(True)
        version, why = result
        if version is None:
            self.status.setText(why)
            return
        self.note.clear()
        self.status.setText(f"saved curation v{version} (corrections: {len(self.corrections)}); kinetics recomputed")
        self.on_saved()
        self.saved.emit(version)

    def _show(self) -> None:
        fill_table(self.table, self.corrections)
