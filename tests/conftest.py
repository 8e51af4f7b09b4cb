"""Shared test settings."""

import torch

# One thread: on a shared 2-core machine, torch's thread pool contending with other processes
# makes the suite several times slower; results do not depend on the thread count.
torch.set_num_threads(1)
