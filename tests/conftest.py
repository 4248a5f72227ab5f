import pytest
import torch

# The suite's networks and batches are tiny: one thread avoids the threading
# overhead that dominates them and keeps the 2-core CI machine responsive.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
