import pytest
import timm
import torch

from curvenet_dist.config import ConfigError, ModelConfig
from curvenet_dist.models.registry import build_backbone


@pytest.mark.parametrize("config, stages", [(ModelConfig(name="cifar_resnet", depth=8), 3),
                                            (ModelConfig(name="resnet50"), 4)])
def test_every_backbone_is_staged_for_slmo(config, stages):
    model = build_backbone(config, num_classes=5)
    assert model.num_stages == stages
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 5)
    # The parts run in order are the whole network.
    assert torch.equal(model.forward_parts(model.forward_parts(x, 0, 2), 2), model(x))
    assert model.bottom_part_count(0) == 0 and model.bottom_part_count(stages) == stages + 1
    with pytest.raises(ValueError, match=f"skip_layers={stages + 1} is outside \\[0, {stages}\\]"):
        model.bottom_part_count(stages + 1)


def test_resnet50_reads_local_weights_and_replaces_a_foreign_classifier(tmp_path):
    source = timm.create_model("resnet50", pretrained=False, num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "r50.pt")
    model = build_backbone(ModelConfig(name="resnet50", weights=str(tmp_path / "r50.pt")), num_classes=14)
    assert torch.equal(model.parts[0][0].weight, source.conv1.weight)
    assert model.parts[-1][1].weight.shape == (14, 2048)
    with pytest.raises(ConfigError, match="no such file"):
        build_backbone(ModelConfig(name="resnet50", weights=str(tmp_path / "missing.pt")), num_classes=14)
