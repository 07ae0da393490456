"""The words uptrack uses everywhere: code, store, plugin and docs (docs/DESIGN.md,
"Vocabulary").

Zones describe the geometry of one detection in one frame; states describe a
particle's condition at a frame, decided over its whole track; events are state
changes.
"""

#: Geometry of one detection relative to the nearest cell.
ZONES = ("inside", "membrane", "outside")
INSIDE, MEMBRANE, OUTSIDE = ZONES

#: A particle's condition at a frame.
STATES = ("extracellular", "membrane_bound", "vesicular", "released")
#: Integer code of each state (its index in STATES), as arrays and the HMM use them.
STATE_CODE = {state: code for code, state in enumerate(STATES)}

#: State changes, keyed by (from_state, to_state).
EVENT_OF_TRANSITION = {
    ("extracellular", "membrane_bound"): "binding",
    ("membrane_bound", "extracellular"): "unbinding",
    ("membrane_bound", "vesicular"): "internalization",
    ("vesicular", "released"): "release",
}
EVENTS = ("binding", "unbinding", "internalization", "release")

#: The rates uptrack estimates, one row each: (rate column, per minute; the event counted; the
#: state a particle is in while at risk of that event, whose summed time is the denominator).
RATES = (
    ("k_internalization_per_min", "internalization", "membrane_bound"),
    ("k_release_per_min", "release", "vesicular"),
    ("k_unbinding_per_min", "unbinding", "membrane_bound"),
)

#: What a reviewer's correction does to a track's detections in a frame range: give them a
#: state, or remove them as not a particle.
CORRECTION_ACTIONS = ("set_state", "false_track")

#: Colours (hex) used for states in plots, napari layers and reports.
STATE_COLORS = {
    "extracellular": "#9e9e9e",
    "membrane_bound": "#ffb000",
    "vesicular": "#00c0ff",
    "released": "#ff3d7f",
}

#: Cell id used for "no cell" in label images and tables.
BACKGROUND = 0
