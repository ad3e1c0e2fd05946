"""HRank's hidden linear layers are scored in the shared calibration pass: one pass for convs and linears."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from prunekit.methods.base import create_method
from prunekit.methods.hrank import hrank_scores
from prunekit.methods.hrank.layouts import Tap
from prunekit.methods.hrank.linear import linear_ranks
from prunekit.models import create


def counting_forwards(model: nn.Module) -> list[int]:
    """Batch sizes of the model's forwards, as they happen."""
    sizes: list[int] = []
    model.register_forward_pre_hook(lambda _m, args: sizes.append(len(args[0])))
    return sizes


def tiny_net() -> nn.Sequential:
    # conv "0" copies the image (1×1 kernel of 1); linear "4" reads its ReLU: unit 0 = the pixel sum,
    # unit 1 = the pixel sum − 10.
    net = nn.Sequential(
        nn.Conv2d(1, 1, 1, bias=False), nn.ReLU(), nn.Flatten(), nn.Identity(), nn.Linear(16, 2), nn.ReLU(),
        nn.Linear(2, 2),
    )  # fmt: skip
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[4].weight.fill_(1.0)
        net[4].bias.copy_(torch.tensor([0.0, -10.0]))
    return net


def images() -> Tensor:
    eye = torch.eye(4)  # rank 4, pixel sum 4: unit 0 fires
    dead = -torch.ones(4, 4)  # all zero after the ReLU: rank 0, no unit fires
    stripes = torch.outer(torch.tensor([1.0, 2.0, 0.0, 1.0]), torch.ones(4))  # rank 1, sum 16: both fire
    return torch.stack([eye, dead, stripes]).unsqueeze(1)


def test_convs_and_linears_share_one_pass() -> None:
    net = tiny_net()
    sizes = counting_forwards(net)
    scores = hrank_scores(net, images(), [Tap("0", "1")], n_images=3, batch_size=2, linears=["4"])
    assert sizes == [2, 1]  # one pass over the three images, in batches of two
    torch.testing.assert_close(scores["0"], torch.tensor([5 / 3]))  # ranks 4, 0, 1
    torch.testing.assert_close(scores["4"], torch.tensor([2 / 3, 1 / 3]))  # fired on 2 and 1 of 3 images
    assert list(scores) == ["0", "4"]


def test_linear_ranks_alone_go_through_the_same_pass() -> None:
    net = tiny_net()
    sizes = counting_forwards(net)
    loader = [(images()[:2], torch.zeros(2)), (images()[2:], torch.zeros(1))]  # (images, labels) pairs
    ranks = linear_ranks(net, loader, ["4"], n_images=3, batch_size=128)
    assert sizes == [2, 1] and net.training  # eval mode during the pass only
    torch.testing.assert_close(ranks["4"], torch.tensor([2 / 3, 1 / 3]))


def test_hrank_prepare_ranks_convs_and_hidden_linears_in_one_pass() -> None:
    # A uniform ratio reaches LeNet-5's hidden fc1 as well: its firing fractions come from the same
    # forwards as the convs' ranks (12 images in batches of 4: three forwards of 4, besides the batch-1
    # tracing forwards of the dependency graph).
    model = create("lenet5")
    calib = torch.randn(12, 1, 28, 28)
    sizes = counting_forwards(model)
    method = create_method("hrank", rates="0.5", n_images=12, batch_size=4)
    method.prepare(model, calib)
    assert [s for s in sizes if s > 1] == [4, 4, 4]
    assert method.scores is not None and list(method.scores) == ["conv1", "conv2", "fc1"]
    alone = linear_ranks(model, calib, ["fc1"], n_images=12, batch_size=4)
    assert torch.equal(method.scores["fc1"], alone["fc1"])
    assert set(method.scores["fc1"].mul(12).round().tolist()) <= set(range(13))  # counts out of 12 images
