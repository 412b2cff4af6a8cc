"""bench slmo --cost-model counts ResNet-50's FLOPs on the meta device: every op of an allocate step must run there."""
from curvenet_dist.bench.slmo import cost_model


def test_the_cost_model_counts_every_skip_layers_of_resnet50_without_computing():
    model = cost_model()
    flops = model["gflops_per_rank"]
    assert flops["plain"] > 0
    # Each stage kept out of the virtual step makes the allocate step cheaper, and every one costs more than plain.
    allocate = [flops[f"skip{k}"] for k in range(5)]
    assert allocate == sorted(allocate, reverse=True) and allocate[-1] > flops["plain"]
