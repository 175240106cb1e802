import os

import torch
from hypothesis import HealthCheck, settings

# Two cores are shared by pytest-xdist workers: one torch thread each.
torch.set_num_threads(1)

settings.register_profile(
    "default", deadline=None, max_examples=25, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("thorough", deadline=None, max_examples=300)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
