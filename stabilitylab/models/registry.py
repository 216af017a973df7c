"""Model registry: name -> builder. Builders return a plain ``nn.Module``.

The batched engine trains stacked copies of these modules with
``torch.func.functional_call`` + ``vmap``, so models must be functional in their
parameters and buffers (no Python-side state that changes per step).
"""

from __future__ import annotations

MODEL_NAMES: tuple[str, ...] = (
    "mlp",
    "lenet_300_100",
    "conv1d",
    "resnet20",
    "resnet32",
    "resnet56",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
)

# name -> "module:function" building an *uninitialized* module, signature
# ``(cfg: ModelConfig, input_shape: tuple, num_classes: int) -> nn.Module``.
# ``stabilitylab.models.build_model`` builds it on the meta device and then
# initializes every tensor from one generator (Kaiming normal, zero biases, BN 1/0).
MODEL_BUILDERS: dict[str, str] = {
    "mlp": "stabilitylab.models.mlp:build_mlp",
    "lenet_300_100": "stabilitylab.models.mlp:build_lenet_300_100",
    "conv1d": "stabilitylab.models.conv1d:build_conv1d",
    "resnet20": "stabilitylab.models.resnet:build_resnet20",
    "resnet32": "stabilitylab.models.resnet:build_resnet32",
    "resnet56": "stabilitylab.models.resnet:build_resnet56",
    "vgg11": "stabilitylab.models.vgg:build_vgg11",
    "vgg13": "stabilitylab.models.vgg:build_vgg13",
    "vgg16": "stabilitylab.models.vgg:build_vgg16",
    "vgg19": "stabilitylab.models.vgg:build_vgg19",
}
assert tuple(MODEL_BUILDERS) == MODEL_NAMES
