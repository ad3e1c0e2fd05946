import pickle

import pytest
import torch
from safetensors.torch import save_file

from prunekit import model_file as checkpoint
from prunekit.errors import CheckpointError
from prunekit.models import create


def test_round_trip_gives_identical_outputs(tmp_path) -> None:
    model = create("resnet20", num_classes=7).eval()
    with torch.no_grad():  # non-default BN statistics must survive too
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = checkpoint.save(model, tmp_path / "m.safetensors", info={"top1": 12.5})
    loaded = checkpoint.load(path).eval()
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(model(x), loaded(x))
    assert loaded.prunekit_arch == {"name": "resnet20", "kwargs": model.prunekit_arch["kwargs"]}
    assert loaded.prunekit_info == {"top1": 12.5}
    assert checkpoint.read_metadata(path)["arch"]["kwargs"]["num_classes"] == 7
    assert not list(tmp_path.glob("*.tmp"))


def test_pickle_is_refused_without_unpickling(tmp_path) -> None:
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps(Boom(), protocol=4))
    with pytest.raises(CheckpointError, match="pickle"):
        checkpoint.load(path)
    torch.save({"w": torch.zeros(1)}, tmp_path / "model.pt")  # a zip archive
    with pytest.raises(CheckpointError, match="pickle"):
        checkpoint.load(tmp_path / "model.pt")


def test_corrupt_and_foreign_files_are_refused(tmp_path) -> None:
    (tmp_path / "short.safetensors").write_bytes(b"abc")
    with pytest.raises(CheckpointError, match="too short"):
        checkpoint.load(tmp_path / "short.safetensors")
    (tmp_path / "len.safetensors").write_bytes((10**9).to_bytes(8, "little") + b"{}")
    with pytest.raises(CheckpointError, match="header length"):
        checkpoint.load(tmp_path / "len.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"), metadata={"x": "1"})
    with pytest.raises(CheckpointError, match="not a prunekit model"):
        checkpoint.load(tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError, match="no model file"):
        checkpoint.load(tmp_path / "missing.safetensors")


def test_weights_that_do_not_match_the_metadata_are_refused(tmp_path) -> None:
    path = checkpoint.save(create("lenet5"), tmp_path / "m.safetensors")
    meta = checkpoint.read_metadata(path)
    other = create("lenet300_100")
    other.prunekit_arch = meta["arch"]  # claims to be lenet5 but carries other tensors
    bad = checkpoint.save(other, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match="do not match"):
        checkpoint.load(bad)


def test_user_models_need_their_base_to_load(tmp_path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 3)
    path = checkpoint.save(model, tmp_path / "x.safetensors")
    assert checkpoint.read_metadata(path)["arch"] is None
    with pytest.raises(CheckpointError, match=r"holds a user model .*model=MyNet"):
        checkpoint.load(path)
    loaded = checkpoint.load(path, model=torch.nn.Linear(2, 3))
    assert torch.equal(loaded.weight, model.weight) and torch.equal(loaded.bias, model.bias)


def test_header_length_that_looks_like_pickle_magic_still_loads(tmp_path) -> None:
    # 640 = 0x280: the header length's first bytes are 80 02, a protocol-2 pickle's opening.
    model = torch.nn.Linear(2, 3)
    path = checkpoint.save(model, tmp_path / "m.safetensors", info={"pad": ""})
    unpadded = int.from_bytes(path.read_bytes()[:8], "little")  # rounded up to a multiple of 8
    for pad in range(640 - unpadded, 640 - unpadded + 16):
        path = checkpoint.save(model, tmp_path / "m.safetensors", info={"pad": "x" * pad})
        if path.read_bytes()[:2] == b"\x80\x02":
            break
    else:
        pytest.fail("no padding gave a 640..655-byte header")
    assert checkpoint.load(path, model=torch.nn.Linear(2, 3)).prunekit_info == {"pad": "x" * pad}
