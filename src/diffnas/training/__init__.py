"""Retraining found architectures from scratch: discrete networks, training recipes and the loop
behind ``diffnas train``."""

from .networks import DartsEvalNetwork, count_flops, count_parameters
from .recipe import TrainRecipe, load_train_recipe, resolve_train_recipe
from .trainer import Trainer, build_network, resume_trainer

__all__ = ["DartsEvalNetwork", "Trainer", "TrainRecipe", "build_network", "count_flops", "count_parameters",
           "load_train_recipe", "resolve_train_recipe", "resume_trainer"]
