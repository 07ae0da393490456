"""The base of every parameter and config section: unknown fields are errors, numbers finite.

A misspelt field (``min_snrr``) or a value such as ``.inf`` / ``.nan`` in a YAML config is
rejected when the config is validated, before any work starts, with the field's name.
"""

from pydantic import BaseModel, ConfigDict


class Params(BaseModel):
    """Strict pydantic model: ``extra="forbid"``, no infinite or NaN floats."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
