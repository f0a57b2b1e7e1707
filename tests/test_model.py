"""The VGG13 of Table I: shapes, head replacement, freezing, backbone loading, parameter/FLOP counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.vocabulary import DISFA_AUS, OPENFACE_AUS
from training.flops import count_parameters, flops_per_sample
from training.model import (
    VGG13,
    ModelConfig,
    build_model,
    freeze_conv_blocks,
    load_backbone,
    replace_head,
)

THIN = ModelConfig(width=0.125)
#: The paper's Table I net: no BatchNorm (the product's default adds it; see the README).
PAPER = ModelConfig(batch_norm=False)


def conv_macs_at_64(width_channels: list[tuple[int, int, int]]) -> int:
    """Multiply-adds of 3x3 convs given (in, out, side) per conv."""
    return sum(c_in * c_out * 9 * side * side for c_in, c_out, side in width_channels)


def test_full_width_layer_sizes_follow_table_one() -> None:
    model = build_model(PAPER)
    convs = [m for m in model.conv_blocks.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256, 256, 256, 256]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert convs[0].in_channels == 1
    # 64 px halved four times is 4: the flattened map is 256 x 4 x 4.
    assert model.classifier.fc1.in_features == 256 * 4 * 4
    assert model.classifier.fc1.out_features == 1024
    assert model.classifier.fc2.out_features == 1024
    assert model.head.out_features == len(OPENFACE_AUS)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_each_block_ends_in_pool_and_dropout() -> None:
    model = build_model(THIN)
    for block in model.conv_blocks:
        assert isinstance(block.pool, nn.MaxPool2d)
        assert block.dropout.p == 0.25
    assert model.classifier.dropout1.p == 0.5 and model.classifier.dropout2.p == 0.5


def test_forward_gives_one_logit_per_au_and_eval_is_deterministic() -> None:
    model = build_model(THIN)
    x = torch.randn(3, 1, 64, 64)
    model.eval()
    out = model(x)
    assert out.shape == (3, 17)
    assert torch.equal(out, model(x))


def test_width_scales_every_layer_and_never_drops_below_one_channel() -> None:
    model = build_model(ModelConfig(width=0.25))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 16, 32, 32, 64, 64, 64, 64, 64, 64]
    assert model.classifier.fc1.out_features == 256
    tiny = build_model(ModelConfig(width=0.001))
    assert min(m.out_channels for m in tiny.modules() if isinstance(m, nn.Conv2d)) == 1
    assert tiny(torch.randn(2, 1, 64, 64)).shape == (2, 17)


def test_rgb_input_and_batch_norm_options() -> None:
    model = build_model(ModelConfig(width=0.125, in_channels=3, batch_norm=True, num_outputs=12))
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 10
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 12)


def test_input_size_must_survive_four_poolings() -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        build_model(ModelConfig(input_size=60))


def test_replace_head_keeps_backbone_and_changes_outputs() -> None:
    config = ModelConfig(width=0.125)
    model = build_model(config)
    fc1_before = model.classifier.fc1.weight.clone()
    replace_head(model, len(DISFA_AUS))
    assert isinstance(model.head, nn.Linear)
    assert model.num_outputs == 12 and model.config.num_outputs == 12
    assert config.num_outputs == 17, "the caller's config must not change"
    assert torch.equal(model.classifier.fc1.weight, fc1_before)
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 12)


@pytest.mark.parametrize("k", [0, 2, 4])
def test_freeze_first_k_blocks_stops_their_gradients_only(k: int) -> None:
    model = build_model(THIN)
    freeze_conv_blocks(model, k)
    model(torch.randn(2, 1, 64, 64)).sum().backward()
    for i, block in enumerate(model.conv_blocks):
        for param in block.parameters():
            assert (param.grad is None) == (i < k), f"block {i}"
    assert model.head.weight.grad is not None
    freeze_conv_blocks(model, 0)
    assert all(p.requires_grad for p in model.parameters())


def test_frozen_batch_norm_keeps_running_statistics() -> None:
    model = build_model(ModelConfig(width=0.125, batch_norm=True))
    freeze_conv_blocks(model, 1)
    model.train()
    frozen_bn = model.conv_blocks[0].bn1
    live_bn = model.conv_blocks[1].bn1
    before_frozen, before_live = frozen_bn.running_mean.clone(), live_bn.running_mean.clone()
    model(torch.randn(4, 1, 64, 64) + 3)
    assert not frozen_bn.training
    assert torch.equal(frozen_bn.running_mean, before_frozen)
    assert not torch.equal(live_bn.running_mean, before_live)


def test_freeze_rejects_block_counts_out_of_range() -> None:
    with pytest.raises(ValueError, match="0 <= k <= 4"):
        freeze_conv_blocks(build_model(THIN), 5)


def test_load_backbone_copies_all_but_the_head() -> None:
    pretrained = build_model(ModelConfig(width=0.125, num_outputs=17))
    finetune = build_model(ModelConfig(width=0.125, num_outputs=12))
    head_before = finetune.head.weight.clone()
    # Keys as DistributedDataParallel saves them.
    wrapped = {f"module.{k}": v for k, v in pretrained.state_dict().items()}
    result = load_backbone(finetune, wrapped)
    assert result.missing == [] and result.unexpected == []
    assert sorted(result.skipped_head) == ["head.bias", "head.weight"]
    for key, value in pretrained.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(finetune.state_dict()[key], value), key
    assert torch.equal(finetune.head.weight, head_before)


def test_load_backbone_reports_missing_unexpected_and_mismatched_keys() -> None:
    model = build_model(THIN)
    state = dict(build_model(THIN).state_dict())
    del state["classifier.fc2.bias"]
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"classifier\.fc2\.bias.*extra\.weight"):
        load_backbone(model, state, source="ckpt.pt")
    result = load_backbone(model, state, strict=False)
    assert result.missing == ["classifier.fc2.bias"] and result.unexpected == ["extra.weight"]
    wider = build_model(ModelConfig(width=0.25)).state_dict()
    with pytest.raises(
        ValueError, match=r"(?s)shape mismatch between ckpt\.pt.*conv_blocks\.0\.conv1"
    ):
        load_backbone(model, wider, source="ckpt.pt")


def test_parameter_count_matches_layer_arithmetic() -> None:
    convs = [(1, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256)]
    convs += [(256, 256)] * 3
    conv_params = sum(c_in * c_out * 9 + c_out for c_in, c_out in convs)
    fc_params = (4096 * 1024 + 1024) + (1024 * 1024 + 1024) + (1024 * 17 + 17)
    model: VGG13 = build_model(PAPER)
    assert count_parameters(model) == conv_params + fc_params
    freeze_conv_blocks(model, 4)
    assert count_parameters(model, trainable_only=True) == fc_params


def test_flops_are_twice_the_multiply_adds_forward_and_about_three_times_in_training() -> None:
    model = build_model(ModelConfig())
    sides = [64, 64, 32, 32, 16, 16, 16, 8, 8, 8]
    channels = [1, 64, 64, 128, 128, 256, 256, 256, 256, 256, 256]
    conv = conv_macs_at_64([(channels[i], channels[i + 1], sides[i]) for i in range(10)])
    fc = 4096 * 1024 + 1024 * 1024 + 1024 * 17
    forward = flops_per_sample(model, training=False)
    assert forward == 2 * (conv + fc)
    training = flops_per_sample(model)
    # Backward: weight and input gradients (2x forward), minus the first conv's input gradient.
    first_conv_input_grad = 2 * 64 * 64 * 64 * 9 * 1
    assert training == 3 * forward - first_conv_input_grad
    assert training == pytest.approx(5.25e9, rel=0.01)
    assert model.training and all(p.grad is None for p in model.parameters())
