"""Constant-output channels: removed, the constant folded into the consumer, or kept when it cannot be."""

import pytest
import torch
from torch import nn

from prunekit import model_file as checkpoint
from prunekit.errors import ConfigError
from prunekit.models import create
from prunekit.surgery.constants import fold_constant_channels


def _widths(model: nn.Module) -> dict[str, int]:
    return {
        n: (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    }


def test_lenet5_constant_filters_and_neurons_go_and_the_outputs_stay(tmp_path) -> None:
    torch.manual_seed(0)
    model = create("lenet5").eval()
    with torch.no_grad():  # zero weights, nonzero biases: each of these outputs ReLU(bias) everywhere
        model.conv1.weight[3:6] = 0
        model.conv2.weight[5:40] = 0
        model.fc1.weight[100:400] = 0
        model.conv2.bias[5:40] = torch.linspace(-0.5, 0.5, 35)  # negative ones are zero after the ReLU
    x = torch.randn(16, 1, 28, 28)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    smaller, plan = fold_constant_channels(model, x)

    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the input is untouched
    keep = [*range(5), *range(40, 50)]
    assert plan == {"conv1": [0, 1, 2, *range(6, 20)], "conv2": keep, "fc1": [*range(100), *range(400, 500)]}
    assert _widths(smaller) == {"conv1": 17, "conv2": 15, "fc1": 200, "fc2": 10}
    assert smaller.fc1.in_features == 15 * 4 * 4
    with torch.no_grad():
        assert torch.allclose(smaller(x), model(x), atol=1e-5)
        other = torch.randn(8, 1, 28, 28)  # inputs the fold never saw
        assert torch.allclose(smaller(other), model(other), atol=1e-5)
    # fc2's bias absorbed fc1's 300 constant neurons: Σ_j fc2.W[:, j] · ReLU(fc1.b[j]).
    expected = model.fc2.bias + model.fc2.weight[:, 100:400] @ torch.relu(model.fc1.bias[100:400])
    assert torch.allclose(smaller.fc2.bias, expected, atol=1e-5)

    path = tmp_path / "folded.safetensors"  # a channel edit like any other: the file rebuilds it exactly
    checkpoint.save(smaller, path)
    loaded = checkpoint.load(path)
    with torch.no_grad():
        assert torch.equal(loaded(x), smaller(x))


class ConvBnConv(nn.Module):
    """A bias-free 1×1 consumer followed by BN, then a padded 3×3 consumer, then a head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(8, 6, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(6, 5, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.fc(self.pool(self.conv3(x)).flatten(1))


def _randomised(model: nn.Module) -> nn.Module:
    torch.manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(0.2, 1)  # positive: the constants survive the ReLU
    return model.eval()


def test_a_bias_free_consumer_moves_the_constant_into_its_batchnorm_and_padding_keeps_channels() -> None:
    model = _randomised(ConvBnConv())
    with torch.no_grad():
        model.conv1.weight[[1, 4]] = 0  # read by the unpadded 1×1 conv2: foldable into bn2's running mean
        model.conv2.weight[2] = 0  # read by conv3 with zero padding: the border sees 0, the rest the constant
    x = torch.randn(8, 3, 10, 10)
    smaller, plan = fold_constant_channels(model, x)

    assert plan == {"conv1": [0, 2, 3, 5, 6, 7]}
    assert _widths(smaller) == {"conv1": 6, "conv2": 6, "conv3": 5, "fc": 4}
    # The constant of channel c is v_c = ReLU(β_c − γ_c·μ_c/σ_c); conv2 loses W[:, c]·v_c, bn2's μ follows.
    bn1 = model.bn1
    v = torch.relu(bn1.bias - bn1.weight * bn1.running_mean / torch.sqrt(bn1.running_var + bn1.eps))
    lost = model.conv2.weight[:, [1, 4], 0, 0] @ v[[1, 4]]
    assert torch.allclose(smaller.bn2.running_mean, model.bn2.running_mean - lost, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(smaller(x), model(x), atol=1e-5)


class Gated(nn.Module):
    """A constant channel multiplied by an input-dependent gate is not constant any more."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.conv2 = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x) * torch.sigmoid(x.mean(dim=(1, 2, 3), keepdim=True))
        return self.conv2(y).mean(dim=(2, 3))


def test_a_gated_channel_and_an_output_channel_are_kept() -> None:
    torch.manual_seed(2)
    model = Gated().eval()
    with torch.no_grad():
        model.conv1.weight[0] = 0
        model.conv2.weight[1] = 0  # a constant network output is still an output
    x = torch.randn(8, 3, 8, 8)
    smaller, plan = fold_constant_channels(model, x)
    assert plan == {} and _widths(smaller) == {"conv1": 4, "conv2": 2}


def test_one_sample_cannot_tell_constants_apart() -> None:
    with pytest.raises(ConfigError, match="at least two inputs"):
        fold_constant_channels(create("lenet5"), torch.randn(1, 1, 28, 28))
