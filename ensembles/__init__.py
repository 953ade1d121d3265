"""Ensembles: a validated DAG of steps behind the ordinary model interface.

Read in order: :mod:`.plan` (the DAG from the ensemble's config, and its checks),
:mod:`.binding` (checks against the step models), :mod:`.dependencies` (loading step models
first), :mod:`.scheduler` (the ensemble's Queue stage) and :mod:`.run` (one request's walk).
"""

from nereid.ensembles.dependencies import load_step_models
from nereid.ensembles.scheduler import EnsembleModel, EnsembleScheduler, load_ensemble

__all__ = ["EnsembleModel", "EnsembleScheduler", "load_ensemble", "load_step_models"]
