"""The options models (``model.options``) of the built-in adapters chgnet, sevenn, alignn and mace.

They live apart from the adapters, whose modules import torch and the model packages, so that ``traits validate``
and ``traits schema`` check and export them without starting torch (``traits.models.base.BUILTIN_OPTIONS``).
Each adapter's ``Options`` is the class here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class CHGNetOptions(BaseModel):
    """Settings of the ``chgnet`` adapter."""

    model_config = ConfigDict(extra="forbid")

    version: Literal["0.3.0", "0.2.0", "r2scan"] = Field(
        "0.3.0", description="Bundled weights of the chgnet wheel (ignored when model.checkpoint names a file).")
    probe: Literal["all", "trainable"] = Field(
        "all", description="Parameters to probe: all (AtomRef included) or only those CHGNet leaves trainable.")


class SevenNetOptions(BaseModel):
    """Settings of the ``sevenn`` adapter."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("7net-0", description="Pretrained model name (7net-0 ships in the sevenn wheel; others "
                       "must have been downloaded) when model.checkpoint names no file.")
    modal: str | None = Field(None, description="Fidelity of a multi-fidelity model (e.g. 'mpa').")


class ALIGNNOptions(BaseModel):
    """Settings of the ``alignn`` adapter."""

    model_config = ConfigDict(extra="forbid")

    property: str | None = Field(None, description="The property the model predicts (a TRAITS target name); "
                                 "default: read from config.json's 'target'.")
    units: str | None = Field(None, description="Units of the predictions (default: those of the property).")
    training_data: str | None = Field(None, description="What the model was trained on (default: config.json's "
                                      "'dataset' when it names a known one; otherwise unknown).")
    cutoff: float | None = Field(None, gt=0, description="Neighbour cutoff in Å (default: config.json's).")
    max_neighbors: int | None = Field(None, ge=1, description="Neighbour cap (default: config.json's).")


class MACEOptions(BaseModel):
    """Settings of the ``mace`` adapter."""

    model_config = ConfigDict(extra="forbid")

    head: str | None = Field(None, description="Head of a multi-head model (default: its first).")
    training_data: str | None = Field(None, description="What the model was trained on (default: as recorded by "
                                      "export; otherwise unknown).")
