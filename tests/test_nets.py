"""The network zoo: every architecture trains on 28x28 greyscale and 32x32 colour input."""
import pytest
import torch
import torch.nn.functional as F

from mmdistill.core.storage import PipelineError
from mmdistill.nn.nets import NETWORKS, make_net

torch.set_num_threads(1)
ARCHITECTURES = ["convnet3", "convnet", "convnet3_pad32", "convnet_pad32", "resnet18", "vgg11", "alexnet", "vit",
                 "resnet18:instance", "vgg11:instance"]


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_trains_and_loss_drops(name, channels, size):
    torch.manual_seed(0)
    x, y = torch.randn(10, channels, size, size), torch.arange(10)
    net = make_net(name, channels, 10, size)
    assert net.embed(x).dim() == 2 and net(x).shape == (10, 10)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)  # the evaluation protocol's optimiser
    losses = []
    for _ in range(5):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_convnet_depth_from_resolution():
    for size, depth in ((28, 3), (32, 3), (64, 4), (128, 5), (256, 6)):
        net = make_net("convnet", 3, 10, size)
        assert sum(isinstance(m, torch.nn.AvgPool2d) for m in net.modules()) == depth


def test_norm_suffix_changes_the_norm_layer():
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in make_net("convnet3:batch", 1, 10, 28).modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in make_net("convnet3", 1, 10, 28).modules())


@pytest.mark.parametrize("name,match", [("resnet50", "unknown network 'resnet50'; valid: convnet"),
                                        ("vgg11:weird", "unknown norm 'weird'"),
                                        ("vit:batch", "vit takes only norm 'layer'")])
def test_bad_names_are_clear_errors(name, match):
    with pytest.raises(PipelineError, match=match):
        make_net(name, 3, 10, 32)


def test_every_registered_name_is_tested():
    deeper = {f"convnet{d}{form}" for d in (4, 5, 6) for form in ("", "_pad32")}
    assert {n.partition(":")[0] for n in ARCHITECTURES} | deeper == set(NETWORKS)


def test_short_training_starts_at_the_full_learning_rate():
    """The x0.1 decay comes after half the epochs, never before the first batch (a 1-epoch DSDM pool used to train
    at a tenth of its rate): one plain SGD step moves the weights by exactly lr x gradient."""
    from mmdistill.nn.train import train_classifier
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    images, labels = torch.randn(8, 1, 2, 2), torch.tensor([0, 1] * 4)
    before = [p.detach().clone() for p in net.parameters()]
    F.cross_entropy(net(images), labels).backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    train_classifier(net, images, labels, 1, "cpu", lr=0.5, batch_size=8, momentum=0.0, weight_decay=0.0,
                     progress=False)
    for old, grad, new in zip(before, grads, net.parameters()):
        torch.testing.assert_close(old - new.detach(), 0.5 * grad)


def test_convnet_pad32_pads_28px_to_32_as_the_dc_code_base():
    """convnet3_pad32 pads a 28 px input to 32 (first conv padding 3): maps of 32/16/8 px, no pixel of the last map
    dropped by its pool, 2048 features. convnet3 pools a 7 px map to 3, dropping its last row and column; at 32 px
    the two forms are one network."""
    torch.manual_seed(0)
    x = torch.randn(1, 1, 28, 28)
    padded, earlier = make_net("convnet3_pad32", 1, 10, 28), make_net("convnet3", 1, 10, 28)
    with torch.no_grad():
        assert padded.features[:-1](x).shape[-2:] == (8, 8) and padded.embed(x).shape == (1, 128 * 4 * 4)
        assert earlier.features[:-1](x).shape[-2:] == (7, 7) and earlier.embed(x).shape == (1, 128 * 3 * 3)
        at32, at32_earlier = make_net("convnet3_pad32", 3, 10, 32), make_net("convnet3", 3, 10, 32)
        at32_earlier.load_state_dict(at32.state_dict())
        x32 = torch.randn(2, 3, 32, 32)
        assert torch.equal(at32.embed(x32), at32_earlier.embed(x32))
