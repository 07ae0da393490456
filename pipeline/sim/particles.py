"""Particle dynamics of the movie simulator: motion, binding and state changes.

States and events are those of :mod:`pipeline.vocabulary`. Free particles
(``extracellular``, ``released``) move in absolute pixel coordinates; bound and
vesicular particles live in cell-relative coordinates (cell, direction ``u``,
relative radius ``rho``, see :mod:`pipeline.sim.cells`) so that they follow
their cell as it drifts and deforms.

Rules, one frame interval ``dt`` at a time (from frame f to f+1):

1. Scheduled transitions. On entering ``membrane_bound`` a particle draws two
   exponential waiting times, internalization (its cell's rate) and unbinding;
   the first one wins. On entering ``vesicular`` it draws its release time. A
   transition due before the end of the interval happens at its exact time
   (continuous time, so rates are exact); its event frame is f+1, the first
   frame in the new state. Unbinding and release put the particle 1.5 px
   outside the membrane.
2. Motion. Free: Brownian (``D_free_um2_s``). Bound: Brownian along the
   membrane (``D_membrane_um2_s``). Vesicular: Brownian (``D_vesicle_um2_s``)
   plus, with rate ``vesicle_run_rate_per_min``, a directed radial run (in or
   out, ``vesicle_run_speed_um_s``) during the interval, reflected to stay at
   ``rho <= RHO_VESICLE_MAX``. A vesicle whose release is due heads straight
   out at run speed in time to dock ``DOCK_DEPTH_PX`` inside the membrane
   (exocytosis happens where the vesicle fuses with the plasma membrane).
3. Contact. An ``extracellular`` particle that ends inside a cell binds with
   probability ``p_binding_per_contact`` (binding time = frame time of f+1);
   otherwise, and always for ``released`` particles, the move is undone (and a
   particle a cell moved onto is pushed out).
4. Arrivals: Poisson(``particle_arrival_per_min`` · dt) new extracellular
   particles at random medium positions. A particle whose position leaves the
   field ends there; its time at risk is censored at that frame.

At frame 0 there are ``n_particles_initial`` extracellular particles and
``n_bound_initial`` / ``n_vesicular_initial`` particles already attached to
random cells (their dwell clocks start at 0; no events are logged for them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipeline.sim.cells import CellLayout
from pipeline.vocabulary import EVENT_OF_TRANSITION, EVENTS, STATES

if TYPE_CHECKING:
    from pipeline.sim.simulate import SimulationConfig

EXTRACELLULAR, MEMBRANE_BOUND, VESICULAR, RELEASED = (STATES.index(s) for s in
                                                      ("extracellular", "membrane_bound", "vesicular", "released"))

#: Vesicles stay at relative radius <= this (inside the cell, off the membrane).
RHO_VESICLE_MAX = 0.85
#: Distance (px) outside the membrane where unbound and released particles start.
EXIT_OFFSET_PX = 1.5
#: Depth (px) inside the membrane where a vesicle docks before its release.
DOCK_DEPTH_PX = 1.0

#: Per-particle arrays of :class:`ParticleSystem` and their dtypes. ``cell`` is 0-based (-1: none);
#: ``y``, ``x`` (px) hold free particles; ``uy``, ``ux``, ``rho`` cell-relative ones; ``born`` is a frame.
_FIELDS = {"particle_id": int, "state": int, "cell": int, "y": float, "x": float, "uy": float, "ux": float,
           "rho": float, "photons0": float, "born": int, "t_enter": float, "t_next": float, "next_state": int}


class ParticleSystem:
    """All particles of one movie, advanced frame by frame.

    Parameters
    ----------
    config : the simulation config (rates, diffusion, brightness, ...).
    k_internalization_per_s, k_release_per_s : (N,) true per-cell rates, 1/s.
    photons_median : median photons per particle.
    rng : random generator (owned by this object from now on).
    """

    def __init__(self, config: SimulationConfig, k_internalization_per_s: np.ndarray,
                 k_release_per_s: np.ndarray, photons_median: float, rng: np.random.Generator):
        self.config = config
        self.rng = rng
        self.dt = config.frame_interval_s
        px2 = config.pixel_size_um**2
        self.D_free = config.D_free_um2_s / px2
        self.D_membrane = config.D_membrane_um2_s / px2
        self.D_vesicle = config.D_vesicle_um2_s / px2
        self.k_int = np.asarray(k_internalization_per_s, float)
        self.k_rel = np.asarray(k_release_per_s, float)
        self.k_unb = config.k_unbinding_per_min / 60.0
        self.photons_median = photons_median
        n_cells = len(self.k_int)
        self.counts = {kind: np.zeros(n_cells, int) for kind in EVENTS}
        self.time_at_risk_s = {MEMBRANE_BOUND: np.zeros(n_cells), VESICULAR: np.zeros(n_cells)}
        self.events: list[tuple[int, int, int, float, str]] = []
        self.rows: list[pd.DataFrame] = []
        self.p = {name: np.zeros(0, dtype) for name, dtype in _FIELDS.items()}
        self.next_id = 0

    # -- bookkeeping -------------------------------------------------------------

    def _append(self, **values: np.ndarray) -> None:
        n = len(values["y"])
        defaults = {"state": EXTRACELLULAR, "cell": -1, "uy": 0.0, "ux": 1.0, "rho": 0.0,
                    "t_next": np.inf, "next_state": -1}
        values["particle_id"] = np.arange(self.next_id, self.next_id + n)
        self.next_id += n
        for name in _FIELDS:
            column = values.get(name, defaults.get(name))
            self.p[name] = np.concatenate([self.p[name], np.broadcast_to(column, (n,)).astype(self.p[name].dtype)])

    def _keep(self, keep: np.ndarray) -> None:
        self.p = {name: column[keep] for name, column in self.p.items()}

    # -- arrivals ----------------------------------------------------------------

    def _photons(self, n: int) -> np.ndarray:
        return self.photons_median * np.exp(self.config.brightness_sigma * self.rng.normal(size=n))

    def add_arrivals(self, n: int, layout: CellLayout, frame: int) -> None:
        """Add ``n`` extracellular particles at random positions in the medium."""
        shape = np.asarray(self.config.shape, float)
        pos = self.rng.uniform(0, 1, size=(n, 2)) * shape - 0.5
        for _ in range(20):
            inside = self._inside(layout, pos[:, 0], pos[:, 1])[0]
            if not inside.any():
                break
            pos[inside] = self.rng.uniform(0, 1, size=(inside.sum(), 2)) * shape - 0.5
        self._append(y=pos[:, 0], x=pos[:, 1], photons0=self._photons(n), born=np.full(n, frame),
                     t_enter=np.full(n, frame * self.dt))

    def add_attached(self, n: int, state: int, layout: CellLayout) -> None:
        """Add ``n`` particles at frame 0 already ``membrane_bound`` or ``vesicular`` in random cells."""
        if layout.n_cells == 0 or n == 0:
            return
        theta = self.rng.uniform(0, 2 * np.pi, n)
        rho = 1.0 if state == MEMBRANE_BOUND else RHO_VESICLE_MAX * np.sqrt(self.rng.uniform(0.05, 1.0, n))
        first = len(self.p["y"])
        self._append(y=np.zeros(n), x=np.zeros(n), cell=self.rng.integers(layout.n_cells, size=n),
                     uy=np.sin(theta), ux=np.cos(theta), rho=rho, photons0=self._photons(n),
                     born=np.zeros(n), t_enter=np.zeros(n))
        self._start(np.arange(first, first + n), state, np.zeros(n), layout)

    @staticmethod
    def _inside(layout: CellLayout, y: np.ndarray, x: np.ndarray):
        if layout.n_cells == 0 or len(y) == 0:
            return np.zeros(len(y), bool), None
        cell, rho, uy, ux = layout.locate(y, x)
        return rho < 1.0, (cell, uy, ux)

    # -- transitions -------------------------------------------------------------

    def _enter(self, idx: np.ndarray, new_state: int, t: np.ndarray, frame: int, layout: CellLayout) -> None:
        """Move particles ``idx`` into ``new_state`` at times ``t`` (s); log events and time at risk."""
        p = self.p
        old = p["state"][idx]
        cell = p["cell"][idx]
        for state, risk in self.time_at_risk_s.items():
            sel = old == state
            np.add.at(risk, cell[sel], t[sel] - p["t_enter"][idx][sel])
        for old_state in np.unique(old):
            kind = EVENT_OF_TRANSITION[(STATES[old_state], STATES[new_state])]
            sel = old == old_state
            np.add.at(self.counts[kind], cell[sel], 1)
            self.events.extend(zip(p["particle_id"][idx][sel].tolist(), (cell[sel] + 1).tolist(),
                                   [frame] * int(sel.sum()), t[sel].tolist(), [kind] * int(sel.sum())))
        self._start(idx, new_state, t, layout)

    def _start(self, idx: np.ndarray, state: int, t: np.ndarray, layout: CellLayout) -> None:
        """Put particles ``idx`` in ``state`` from times ``t`` (s): place them and draw their next transition."""
        p = self.p
        cell = p["cell"][idx]
        p["state"][idx] = state
        p["t_enter"][idx] = t
        if state in (EXTRACELLULAR, RELEASED):
            p["y"][idx], p["x"][idx] = layout.point(cell, p["uy"][idx], p["ux"][idx], 1.0, EXIT_OFFSET_PX)
            p["t_next"][idx] = np.inf
            if state == EXTRACELLULAR:
                p["cell"][idx] = -1
            return
        with np.errstate(divide="ignore"):
            if state == MEMBRANE_BOUND:
                t_int = t + self.rng.exponential(size=len(idx)) / self.k_int[cell]
                t_unb = t + self.rng.exponential(size=len(idx)) / self.k_unb
                p["t_next"][idx] = np.minimum(t_int, t_unb)
                p["next_state"][idx] = np.where(t_int <= t_unb, VESICULAR, EXTRACELLULAR)
            else:  # VESICULAR
                p["t_next"][idx] = t + self.rng.exponential(size=len(idx)) / self.k_rel[cell]
                p["next_state"][idx] = RELEASED

    def _scheduled_transitions(self, t1: float, frame: int, layout: CellLayout) -> None:
        while True:
            due = np.flatnonzero(self.p["t_next"] <= t1)
            if len(due) == 0:
                return
            # one target state per pass: entering a state schedules the next change,
            # which may itself fall before t1 and must be seen by the next pass
            new_state = self.p["next_state"][due[0]]
            idx = due[self.p["next_state"][due] == new_state]
            if new_state == VESICULAR:
                self.p["rho"][idx] = self._entry_rho(idx, layout)
            self._enter(idx, int(new_state), self.p["t_next"][idx].copy(), frame, layout)

    def _entry_rho(self, idx: np.ndarray, layout: CellLayout) -> np.ndarray:
        """Relative radius of new vesicles: their interior depth, or, with ``crossing_frames``,
        just inside the membrane (``DOCK_DEPTH_PX``), from where they move in (see _cross)."""
        if self.config.crossing_frames == 0:
            return np.full(len(idx), RHO_VESICLE_MAX)
        radius = layout.radius(self.p["cell"][idx], self.p["uy"][idx], self.p["ux"][idx])
        return np.maximum(1.0 - DOCK_DEPTH_PX / radius, RHO_VESICLE_MAX)

    def _cross(self, idx: np.ndarray, before: tuple[np.ndarray, np.ndarray, np.ndarray], t1: float,
               layout: CellLayout) -> None:
        """Vesicles still crossing the membrane (``rho`` before this step, in ``before`` with the
        direction, above ``RHO_VESICLE_MAX``, internalized under ``crossing_frames`` intervals
        before ``t1``) keep their direction and move one ``1 / crossing_frames`` of the way from
        the membrane to ``RHO_VESICLE_MAX`` instead of their Brownian step."""
        frames = self.config.crossing_frames
        uy0, ux0, rho0 = before
        crossing = (frames > 0) & (rho0 > RHO_VESICLE_MAX) & (t1 - self.p["t_enter"][idx] < (frames + 1) * self.dt)
        if not crossing.any():
            return
        sel = idx[crossing]
        uy0, ux0, rho0 = uy0[crossing], ux0[crossing], rho0[crossing]
        radius = layout.radius(self.p["cell"][sel], uy0, ux0)
        step = np.maximum(1.0 - DOCK_DEPTH_PX / radius - RHO_VESICLE_MAX, 0.0) / frames
        self.p["uy"][sel], self.p["ux"][sel] = uy0, ux0
        self.p["rho"][sel] = np.maximum(rho0 - step, RHO_VESICLE_MAX)

    # -- motion ------------------------------------------------------------------

    def _move_bound(self, idx: np.ndarray, layout: CellLayout) -> None:
        p = self.p
        r = layout.radius(p["cell"][idx], p["uy"][idx], p["ux"][idx])
        theta = np.arctan2(p["uy"][idx], p["ux"][idx])
        theta += self.rng.normal(size=len(idx)) * np.sqrt(2 * self.D_membrane * self.dt) / r
        p["uy"][idx], p["ux"][idx] = np.sin(theta), np.cos(theta)

    def _move_vesicles(self, idx: np.ndarray, t1: float, layout: CellLayout) -> None:
        p = self.p
        cell, uy, ux = p["cell"][idx], p["uy"][idx], p["ux"][idx]
        uy0, ux0, rho0 = uy.copy(), ux.copy(), p["rho"][idx].copy()
        dist = p["rho"][idx] * layout.radius(cell, uy, ux)
        step = self.rng.normal(size=(len(idx), 2)) * np.sqrt(2 * self.D_vesicle * self.dt)
        runs = self.rng.random(len(idx)) < -np.expm1(-self.config.vesicle_run_rate_per_min / 60 * self.dt)
        run_px = self.config.vesicle_run_speed_um_s / self.config.pixel_size_um * self.dt
        dist += runs * self.rng.choice([-1.0, 1.0], size=len(idx)) * run_px
        py, px = dist * uy + step[:, 0], dist * ux + step[:, 1]
        new_dist = np.maximum(np.hypot(py, px), 1e-6)
        uy, ux = py / new_dist, px / new_dist
        rho = new_dist / layout.radius(cell, uy, ux)
        rho = np.where(rho > RHO_VESICLE_MAX, 2 * RHO_VESICLE_MAX - rho, rho)
        rho = np.clip(rho, 0.02, RHO_VESICLE_MAX)
        # exocytosis: a vesicle due for release heads straight out at run speed and
        # docks just inside the membrane, so it fuses where it is released
        radius = layout.radius(cell, p["uy"][idx], p["ux"][idx])
        dock = 1.0 - DOCK_DEPTH_PX / radius
        heading_out = (run_px > 0) & ((p["t_next"][idx] - t1) * run_px / self.dt
                                      < (dock - p["rho"][idx]) * radius)
        out = np.minimum(p["rho"][idx] + run_px / radius, dock)
        keep = ~heading_out
        p["uy"][idx[keep]], p["ux"][idx[keep]] = uy[keep], ux[keep]
        p["rho"][idx] = np.where(heading_out, out, rho)
        self._cross(idx[keep], (uy0[keep], ux0[keep], rho0[keep]), t1, layout)

    def _move_free(self, idx: np.ndarray, t1: float, frame: int, layout: CellLayout) -> None:
        p = self.p
        old_y, old_x = p["y"][idx], p["x"][idx]
        step = self.rng.normal(size=(len(idx), 2)) * np.sqrt(2 * self.D_free * self.dt)
        y, x = old_y + step[:, 0], old_x + step[:, 1]
        inside, where = self._inside(layout, y, x)
        if inside.any():
            cell, uy, ux = (a[inside] for a in where)
            hit = idx[inside]
            binds = (p["state"][hit] == EXTRACELLULAR) & (self.rng.random(len(hit)) < self.config.p_binding_per_contact)
            p["cell"][hit[binds]] = cell[binds]
            p["uy"][hit[binds]], p["ux"][hit[binds]] = uy[binds], ux[binds]
            p["rho"][hit[binds]] = 1.0
            self._enter(hit[binds], MEMBRANE_BOUND, np.full(binds.sum(), t1), frame, layout)
            bounce = np.flatnonzero(inside)[~binds]
            y[bounce], x[bounce] = old_y[bounce], old_x[bounce]
            still, where = self._inside(layout, y[bounce], x[bounce])
            if still.any():  # a cell moved onto the particle: push it out
                cell, uy, ux = (a[still] for a in where)
                y[bounce[still]], x[bounce[still]] = layout.point(cell, uy, ux, 1.0, EXIT_OFFSET_PX)
        free = np.isin(p["state"][idx], (EXTRACELLULAR, RELEASED))
        p["y"][idx[free]], p["x"][idx[free]] = y[free], x[free]

    # -- public ------------------------------------------------------------------

    def positions(self, layout: CellLayout) -> tuple[np.ndarray, np.ndarray]:
        """Absolute (y, x) in px of all particles under ``layout``."""
        p = self.p
        y, x = p["y"].copy(), p["x"].copy()
        attached = np.flatnonzero(np.isin(p["state"], (MEMBRANE_BOUND, VESICULAR)))
        if len(attached):
            a = attached
            y[a], x[a] = layout.point(p["cell"][a], p["uy"][a], p["ux"][a], p["rho"][a])
        return y, x

    def step(self, frame: int, layout: CellLayout) -> None:
        """Advance from ``frame`` to ``frame + 1``; ``layout`` is the cell geometry at ``frame + 1``."""
        t1 = (frame + 1) * self.dt
        self._scheduled_transitions(t1, frame + 1, layout)
        state = self.p["state"]
        self._move_bound(np.flatnonzero(state == MEMBRANE_BOUND), layout)
        self._move_vesicles(np.flatnonzero(state == VESICULAR), t1, layout)
        self._move_free(np.flatnonzero((state == EXTRACELLULAR) | (state == RELEASED)), t1, frame + 1, layout)
        self.add_arrivals(self.rng.poisson(self.config.particle_arrival_per_min / 60 * self.dt), layout, frame + 1)
        y, x = self.positions(layout)
        ny, nx = self.config.shape
        in_field = (y >= -0.5) & (y < ny - 0.5) & (x >= -0.5) & (x < nx - 0.5)
        self._censor(~in_field, t1)
        self._keep(in_field)

    def _censor(self, sel: np.ndarray, t: float) -> None:
        """Add the time at risk of particles ``sel`` up to time ``t`` (they end or the movie ends)."""
        p = self.p
        for state, risk in self.time_at_risk_s.items():
            s = sel & (p["state"] == state)
            np.add.at(risk, p["cell"][s], t - p["t_enter"][s])

    def record(self, frame: int, layout: CellLayout) -> None:
        """Store the truth rows of ``frame`` (call after :meth:`step` to that frame)."""
        p = self.p
        y, x = self.positions(layout)
        photons = p["photons0"] * np.exp(-self.config.bleach_rate_per_frame * (frame - p["born"]))
        visible = self.rng.random(len(y)) >= self.config.blink_probability
        self.rows.append(pd.DataFrame({
            "frame": frame, "particle_id": p["particle_id"], "y": y, "x": x,
            "cell_id": np.where(p["state"] == EXTRACELLULAR, 0, p["cell"] + 1),
            "state": np.asarray(STATES)[p["state"]], "photons": photons, "visible": visible,
        }))

    def finish(self, frame: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Censor what is still running at the last ``frame``; return (particles, events) tables."""
        self._censor(np.ones(len(self.p["y"]), bool), frame * self.dt)
        particles = pd.concat(self.rows, ignore_index=True)
        events = pd.DataFrame(self.events, columns=["particle_id", "cell_id", "frame", "time_s", "kind"])
        events = events.sort_values(["frame", "time_s", "particle_id"], kind="stable", ignore_index=True)
        return particles, events
