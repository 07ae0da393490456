"""What a batch shows while it runs: one line or bar per movie slot."""

from __future__ import annotations

import sys
import threading
from datetime import datetime

from tqdm.auto import tqdm

from pipeline.run.batch.outcome import MovieOutcome
from pipeline.run.runner import STAGES


class BatchDisplay:
    """Per-movie and overall progress: tqdm bars on a terminal, timestamped lines otherwise.

    With ``live=False`` only the messages (dashboard address, one line per finished
    movie) are shown.

    Thread-safe: movies report from their own threads.
    """

    def __init__(self, n_movies: int, slots: int, stream=None, live: bool = True):

        self.stages = STAGES
        self.stream = stream if stream is not None else sys.stderr
        self.live = live  # False: only messages and one line per finished movie
        self.tty = live and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.lock = threading.Lock()
        self.n_movies, self.done, self.failed = n_movies, 0, 0
        self.free = list(range(slots))
        self.slot_of: dict[str, int] = {}
        self.bars: dict[int, object] = {}
        self.overall = None
        if self.tty:

            self.overall = tqdm(total=n_movies, desc="movies", unit="movie", position=0,
                                file=self.stream, leave=True, disable=False)
            for slot in range(slots):
                self.bars[slot] = tqdm(total=len(STAGES), desc="(idle)", unit="stage",
                                       position=slot + 1, file=self.stream, leave=False,
                                       disable=False, bar_format="{desc:<32} {bar} {n}/{total} stages{postfix}")

    def message(self, text: str) -> None:
        with self.lock:
            if self.tty:

                tqdm.write(text, file=self.stream)
            else:
                print(text, file=self.stream, flush=True)

    def _line(self, text: str) -> None:
        if self.live and not self.tty:
            self.message(f"{datetime.now():%H:%M:%S} {text}")

    def movie_started(self, name: str) -> None:
        with self.lock:
            slot = self.free.pop(0) if self.free else 0
            self.slot_of[name] = slot
            if self.tty:
                bar = self.bars[slot]
                bar.reset(total=len(self.stages))
                bar.set_description_str(name[:32], refresh=False)
                bar.set_postfix_str("starting")
        self._line(f"{name}: started")

    def stage(self, name: str, stage: str, done: bool) -> None:
        if self.tty:
            with self.lock:
                bar = self.bars[self.slot_of[name]]
                if done:
                    bar.update()
                bar.set_postfix_str("" if done else stage)
        elif done:
            self._line(f"{name}: {stage} done ({self.stages.index(stage) + 1}/{len(self.stages)})")

    def tasks(self, name: str, desc: str, n: int, total: int) -> None:
        if self.tty:
            with self.lock:
                self.bars[self.slot_of[name]].set_postfix_str(f"{desc} {n}/{total}")

    def movie_finished(self, name: str, outcome: MovieOutcome) -> None:
        with self.lock:
            self.done += 1
            self.failed += outcome.status != "ok"
            slot = self.slot_of.pop(name, None)
            if slot is not None:
                self.free.append(slot)
                self.free.sort()
                if self.tty:
                    self.bars[slot].set_description_str("(idle)", refresh=False)
                    self.bars[slot].set_postfix_str("")
            if self.tty:
                self.overall.update()
                self.overall.set_postfix_str(f"{self.failed} failed" if self.failed else "")
        what = outcome.note or outcome.status
        if outcome.status != "ok":
            what = f"FAILED: {outcome.error}"
        self.message(f"[{self.done}/{self.n_movies}] {name}: {what} ({outcome.seconds:.0f} s)")

    def close(self) -> None:
        if self.tty:
            for bar in self.bars.values():
                bar.close()
            self.overall.close()
