"""Optimizers (``create_optimizer``), LR schedules as pure functions (``create_scheduler``), weight EMA."""
from .ema import ModelEma
from .optimizers import OPTIMIZERS, base_lr, create_optimizer, param_groups
from .schedules import SCHEDULES, create_scheduler, lr_factor

__all__ = ["ModelEma", "OPTIMIZERS", "base_lr", "create_optimizer", "param_groups", "SCHEDULES", "create_scheduler",
           "lr_factor"]
