import torch

from diffnas.registry import Catalogue, get_plugin_manager
from diffnas_sparsemax.relaxation import Sparsemax, sparsemax


def test_sparsemax_values_by_hand():
    # z = [1, 0.5, -1]: support {0, 1}, t = (1 + 0.5 - 1) / 2 = 0.25 -> [0.75, 0.25, 0]
    p = sparsemax(torch.tensor([[1.0, 0.5, -1.0]]))
    assert torch.allclose(p, torch.tensor([[0.75, 0.25, 0.0]]))
    # far apart: one-hot
    assert torch.equal(sparsemax(torch.tensor([[3.0, 0.0, 0.0]])), torch.tensor([[1.0, 0.0, 0.0]]))


def test_sparsemax_jacobian_on_support():
    z = torch.tensor([1.0, 0.5, -1.0], requires_grad=True)
    g = torch.tensor([1.0, 0.0, 0.0])
    (sparsemax(z) * g).sum().backward()
    # J = diag(s) - s s^T / |S| with S = {0, 1}: row 0 = [0.5, -0.5, 0]
    assert torch.allclose(z.grad, torch.tensor([0.5, -0.5, 0.0]))


def test_found_through_the_entry_point():
    cat = Catalogue(get_plugin_manager(autoload=True))
    entry = cat.get("relaxation", "sparsemax")
    assert entry.cls is Sparsemax
    assert entry.plugin == "sparsemax"
