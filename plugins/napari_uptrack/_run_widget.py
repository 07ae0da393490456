"""Run widget: run the pipeline on the open movie in a worker thread, then open the results.

The run is ``pipeline.run.runner.run`` with a YAML config (``input.path`` replaced by the
chosen movie layer's file, if one is chosen). The viewer stays responsive; the
progress bar counts the stages recorded as done in the store, and the finished
store is opened with the uptrack reader.
"""

from __future__ import annotations

from pathlib import Path

from napari.layers import Image
from napari.qt.threading import create_worker
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_uptrack._layers import movie_path
from pipeline.errors import InputError
from pipeline.io.store import read_attrs
from pipeline.run.config import load_config
from pipeline.run.runner import STAGES, run, store_path

CONFIG_INPUT = "(the config's input.path)"
#: How often the progress bar reads the store, ms.
POLL_MS = 500


class RunWidget(QWidget):
    """Dock widget: run ``uptrack`` on a movie with a config, without freezing the viewer.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
    """

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.worker = None
        self.store: Path | None = None

        self.config_path = QLineEdit(placeholderText="run config (YAML), e.g. from Detection tuning")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        config_row = QHBoxLayout()
        config_row.addWidget(self.config_path, 1)
        config_row.addWidget(browse)
        self.movie_box = QComboBox()
        self.run_button = QPushButton("Run")
        self.run_button.clicked.connect(self.start)
        self.progress = QProgressBar(minimum=0, maximum=len(STAGES), format="%v / %m stages")
        self.status = QLabel(wordWrap=True)

        form = QFormLayout()
        form.addRow("config", config_row)
        form.addRow("movie", self.movie_box)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.run_button)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.timer = QTimer(interval=POLL_MS)
        self.timer.timeout.connect(self._poll)
        self.viewer.layers.events.inserted.connect(self._list_movies)
        self.viewer.layers.events.removed.connect(self._list_movies)
        self._list_movies()

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "uptrack run config", "", "YAML (*.yaml *.yml)")
        if path:
            self.config_path.setText(path)

    def _list_movies(self, event=None) -> None:
        """Offer the files of the open image layers as the movie to run on."""
        files = [*dict.fromkeys(movie_path(layer) for layer in self.viewer.layers if isinstance(layer, Image))]
        choices = [CONFIG_INPUT, *(path for path in files if path)]
        current = self.movie_box.currentText()
        self.movie_box.clear()
        self.movie_box.addItems(choices)
        self.movie_box.setCurrentText(current if current in choices else choices[-1])

    def start(self) -> None:
        """Validate the config and start the run in a worker thread."""
        if not self.config_path.text():
            self.status.setText("choose a run config (YAML) first")
            return
        movie = self.movie_box.currentText()
        overrides = [] if movie in (CONFIG_INPUT, "") else [f"input.path={movie}"]
        try:
            config = load_config(self.config_path.text(), overrides)
        except InputError as exc:
            self.status.setText(str(exc))
            return
        self.store = store_path(config)
        self.run_button.setEnabled(False)
        self.progress.setValue(0)
        self.status.setText(f"running on {config.input.path} → {self.store}")
        self.worker = create_worker(run, config, _start_thread=False)
        self.worker.returned.connect(self._done)
        self.worker.errored.connect(lambda exc: self.status.setText(f"run failed: {exc}"))
        self.worker.finished.connect(self._finished)
        self.timer.start()
        self.worker.start()

    def _poll(self) -> None:
        """Progress: stages done in the store (an old complete store about to be replaced counts 0)."""
        try:
            attrs = read_attrs(self.store)
        except InputError:
            return
        self.progress.setValue(0 if attrs["complete"] else len(attrs["stages_completed"]))

    def _done(self, path: Path) -> None:
        self.progress.setValue(self.progress.maximum())
        self.status.setText(f"done: {path}")
        self.viewer.open(path, plugin="uptrack")

    def _finished(self) -> None:
        self.timer.stop()
        self.worker = None
        self.run_button.setEnabled(True)
