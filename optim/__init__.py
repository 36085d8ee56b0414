"""Optimizers (``create_optimizer``) and LR schedules as pure functions (``create_scheduler``)."""
from .optimizers import OPTIMIZERS, create_optimizer, param_groups
from .schedules import SCHEDULES, create_scheduler, lr_factor

__all__ = ["OPTIMIZERS", "create_optimizer", "param_groups", "SCHEDULES", "create_scheduler", "lr_factor"]
