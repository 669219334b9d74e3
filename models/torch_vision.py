"""PyTorch vision models of the zoo: torchvision, timm and two small nets written here.

All are randomly initialised (``weights=None`` / ``pretrained=False``); none
downloads anything. CNNs run at 64x64 where the architecture allows it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from zoo_common import Input, Spec, torch_export

TORCH = "torch 2.14.1"


def _seeded(factory: Callable[[], Any]) -> Any:
    import torch

    torch.manual_seed(0)
    return factory().eval()


class _FirstTensor:
    """Module wrapper returning ``out['out']`` (segmentation) or ``out[0]`` (tuples)."""

    @staticmethod
    def wrap(module: Any) -> Any:
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = module

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                out = self.inner(x)
                if isinstance(out, dict):
                    return out["out"]
                if isinstance(out, (tuple, list)):
                    return out[0]
                return out

        return Wrapped().eval()


def _image_builder(
    factory: Callable[[], Any], shape: tuple[int, ...], dynamo: bool, opset: int, wrap: bool
) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        import torch

        model = _seeded(factory)
        if wrap:
            model = _FirstTensor.wrap(model)
        batch = 2 if dynamo else 1
        x = torch.randn(batch, *shape[1:])
        torch_export(model, (x,), path, ["input"], dynamo=dynamo, opset=opset)

    return build


def image_spec(
    name: str,
    factory: Callable[[], Any],
    source: str,
    tags: list[str],
    *,
    shape: tuple[int, ...] = (1, 3, 64, 64),
    dynamo: bool = True,
    opset: int = 18,
    wrap: bool = False,
) -> Spec:
    exporter = "dynamo" if dynamo else "torchscript"
    framework = source.split(".", 1)[0]
    framework = {"torchvision": "pytorch", "timm": "pytorch"}.get(framework, "pytorch")
    provenance = (f"{source}, random init, input {'x'.join(map(str, shape))}, {TORCH}, "
                  f"{exporter} exporter, opset {opset}")
    return Spec(
        name=name,
        build=_image_builder(factory, shape, dynamo, opset, wrap),
        inputs=[Input("input", shape)],
        exporter=exporter,
        framework=framework,
        provenance=provenance,
        tags=[*tags, exporter],
    )


def _tv(fn: str, **kwargs: Any) -> Callable[[], Any]:
    def factory() -> Any:
        import torchvision

        return getattr(torchvision.models, fn)(weights=None, **kwargs)

    return factory


def _tv_seg(fn: str, **kwargs: Any) -> Callable[[], Any]:
    def factory() -> Any:
        import torchvision

        return getattr(torchvision.models.segmentation, fn)(
            weights=None, weights_backbone=None, **kwargs)

    return factory


def _tv_video(fn: str) -> Callable[[], Any]:
    def factory() -> Any:
        import torchvision

        return getattr(torchvision.models.video, fn)(weights=None, num_classes=10)

    return factory


def _timm(arch: str, **kwargs: Any) -> Callable[[], Any]:
    def factory() -> Any:
        import timm

        return timm.create_model(arch, pretrained=False, **kwargs)

    return factory


def _espcn(scale: int = 3) -> Callable[[], Any]:
    """ESPCN (Shi et al. 2016): conv feature extractor, sub-pixel conv (PixelShuffle)."""

    def factory() -> Any:
        import torch
        from torch import nn

        class ESPCN(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.body = nn.Sequential(
                    nn.Conv2d(1, 64, 5, padding=2), nn.Tanh(),
                    nn.Conv2d(64, 32, 3, padding=1), nn.Tanh(),
                    nn.Conv2d(32, scale * scale, 3, padding=1),
                )
                self.shuffle = nn.PixelShuffle(scale)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return torch.sigmoid(self.shuffle(self.body(x)))

        return ESPCN()

    return factory


def _unet() -> Callable[[], Any]:
    """A two-level U-Net: skip concatenations, max-pool down, ConvTranspose up."""

    def factory() -> Any:
        import torch
        from torch import nn

        def block(cin: int, cout: int) -> nn.Module:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
            )

        class UNet(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.enc1, self.enc2, self.mid = block(3, 16), block(16, 32), block(32, 64)
                self.up2 = nn.ConvTranspose2d(64, 32, 2, stride=2)
                self.dec2 = block(64, 32)
                self.up1 = nn.ConvTranspose2d(32, 16, 2, stride=2)
                self.dec1 = block(32, 16)
                self.head = nn.Conv2d(16, 2, 1)
                self.pool = nn.MaxPool2d(2)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                e1 = self.enc1(x)
                e2 = self.enc2(self.pool(e1))
                m = self.mid(self.pool(e2))
                d2 = self.dec2(torch.cat([self.up2(m), e2], dim=1))
                d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
                return self.head(d1)

        return UNet()

    return factory


def _resnext_small() -> Callable[[], Any]:
    def factory() -> Any:
        from torchvision.models.resnet import Bottleneck, ResNet

        return ResNet(Bottleneck, [1, 1, 1, 1], groups=32, width_per_group=4, num_classes=100)

    return factory


def _segformer() -> Callable[[], Any]:
    """SegFormer (MiT encoder, all-MLP decoder) at a reduced width: logits only."""

    def factory() -> Any:
        import torch
        import transformers

        config = transformers.SegformerConfig(
            num_encoder_blocks=4, depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 64, 128],
            num_attention_heads=[1, 2, 2, 4], decoder_hidden_size=64, num_labels=4)

        class Logits(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = transformers.SegformerForSemanticSegmentation(config)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.inner(pixel_values=x).logits

        return Logits()

    return factory


def _raft() -> Callable[[], Any]:
    """torchvision RAFT-small with two flow updates; the last flow field is the output."""

    def factory() -> Any:
        import torch
        import torchvision

        class Flow(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = torchvision.models.optical_flow.raft_small(weights=None)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.inner(x[:, :3], x[:, 3:], num_flow_updates=2)[-1]

        return Flow()

    return factory


def _swin() -> Callable[[], Any]:
    # Swin-T layout (patch 4, depths 2-2-6-2, heads 3-6-12-24) at 64x64 with window 4 and
    # half width, so every stage's resolution (16, 8, 4, 2) is a whole number of windows.
    return _timm("swin_tiny_patch4_window7_224", img_size=64, window_size=4, embed_dim=48,
                 num_heads=(3, 6, 12, 24), num_classes=100)


SPECS: list[Spec] = [
    image_spec("tv-resnet18", _tv("resnet18"), "torchvision.models.resnet18(weights=None)",
               ["cnn", "residual"]),
    image_spec("tv-resnet18-ts", _tv("resnet18"), "torchvision.models.resnet18(weights=None)",
               ["cnn", "residual"], dynamo=False, opset=17),
    image_spec("tv-resnext-1111", _resnext_small(),
        "torchvision.models.resnet.ResNet(Bottleneck, [1,1,1,1], groups=32, width_per_group=4) "
        "(ResNeXt-50 32x4d blocks, one per stage)", ["cnn", "residual", "group-conv"]),
    image_spec("tv-densenet121", _tv("densenet121"), "torchvision.models.densenet121(weights=None)",
               ["cnn", "dense-concat"]),
    image_spec("tv-mobilenet-v2", _tv("mobilenet_v2"),
               "torchvision.models.mobilenet_v2(weights=None)",
               ["cnn", "depthwise", "inverted-residual"]),
    image_spec("tv-mobilenet-v3-small", _tv("mobilenet_v3_small"),
               "torchvision.models.mobilenet_v3_small(weights=None)",
               ["cnn", "depthwise", "inverted-residual", "se", "hardswish"]),
    image_spec("tv-shufflenet-v2", _tv("shufflenet_v2_x0_5"),
               "torchvision.models.shufflenet_v2_x0_5(weights=None)",
               ["cnn", "depthwise", "channel-shuffle", "split"]),
    image_spec("tv-squeezenet1-1", _tv("squeezenet1_1"),
               "torchvision.models.squeezenet1_1(weights=None)", ["cnn", "concat"],
               dynamo=False, opset=13),
    image_spec("tv-mnasnet0-5", _tv("mnasnet0_5"), "torchvision.models.mnasnet0_5(weights=None)",
               ["cnn", "depthwise", "inverted-residual"], dynamo=False, opset=17),
    image_spec("tv-efficientnet-b0", _tv("efficientnet_b0"),
               "torchvision.models.efficientnet_b0(weights=None)",
               ["cnn", "depthwise", "inverted-residual", "se", "silu"]),
    image_spec("tv-regnet-y-400mf", _tv("regnet_y_400mf"),
               "torchvision.models.regnet_y_400mf(weights=None)",
               ["cnn", "residual", "group-conv", "se"]),
    image_spec("tv-googlenet", _tv("googlenet", aux_logits=False, init_weights=True),
               "torchvision.models.googlenet(weights=None, aux_logits=False)",
               ["cnn", "inception", "concat"], dynamo=False, opset=17),
    image_spec("tv-lraspp-mobilenet-v3", _tv_seg("lraspp_mobilenet_v3_large", num_classes=4),
               "torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, "
               "num_classes=4)", ["segmentation", "depthwise", "se", "resize"], wrap=True),
    image_spec("tv-deeplabv3-mobilenet-v3", _tv_seg("deeplabv3_mobilenet_v3_large", num_classes=4,
               aux_loss=False),
               "torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(weights=None, "
               "num_classes=4)", ["segmentation", "dilated-conv", "depthwise", "resize"],
               wrap=True),
    image_spec("tv-mc3-18", _tv_video("mc3_18"),
               "torchvision.models.video.mc3_18(weights=None, num_classes=10)",
               ["video", "conv3d", "residual"], shape=(1, 3, 4, 32, 32)),
    image_spec("espcn-x3", _espcn(3), "ESPCN super-resolution net written in models/torch_vision.py",
               ["super-resolution", "pixel-shuffle"], shape=(1, 1, 32, 32)),
    image_spec("unet-tiny", _unet(), "two-level U-Net written in models/torch_vision.py",
               ["segmentation", "concat", "conv-transpose"], dynamo=False, opset=17),
    image_spec("timm-resnext26ts", _timm("resnext26ts"), "timm.create_model('resnext26ts')",
               ["cnn", "residual", "group-conv", "silu"]),
    image_spec("timm-convnext-atto", _timm("convnext_atto"), "timm.create_model('convnext_atto')",
               ["convnext", "depthwise", "layernorm"]),
    image_spec("timm-convnextv2-atto", _timm("convnextv2_atto"),
               "timm.create_model('convnextv2_atto')", ["convnext", "depthwise", "grn"]),
    image_spec("timm-efficientnet-b0", _timm("efficientnet_b0"),
               "timm.create_model('efficientnet_b0')",
               ["cnn", "depthwise", "inverted-residual", "se"], dynamo=False, opset=17),
    image_spec("timm-mobilenetv3-small-050", _timm("mobilenetv3_small_050"),
               "timm.create_model('mobilenetv3_small_050')",
               ["cnn", "depthwise", "inverted-residual", "se", "hardswish"]),
    image_spec("timm-regnety-002", _timm("regnety_002"), "timm.create_model('regnety_002')",
               ["cnn", "residual", "group-conv", "se"]),
    image_spec("timm-ghostnet-050", _timm("ghostnet_050"), "timm.create_model('ghostnet_050')",
               ["cnn", "depthwise", "concat", "se"]),
    image_spec("timm-mixnet-s", _timm("mixnet_s"), "timm.create_model('mixnet_s')",
               ["cnn", "depthwise", "split", "se"]),
    image_spec("timm-skresnet18", _timm("skresnet18"), "timm.create_model('skresnet18')",
               ["cnn", "residual", "selective-kernel"]),
    image_spec("timm-dla46-c", _timm("dla46_c"), "timm.create_model('dla46_c')",
               ["cnn", "residual", "concat"]),
    image_spec("timm-hrnet-w18-small", _timm("hrnet_w18_small"),
               "timm.create_model('hrnet_w18_small')", ["cnn", "multi-resolution", "resize"]),
    image_spec("timm-vit-tiny", _timm("vit_tiny_patch16_224", img_size=64),
               "timm.create_model('vit_tiny_patch16_224', img_size=64)", ["vit", "attention"]),
    image_spec("timm-deit-tiny-distilled", _timm("deit_tiny_distilled_patch16_224", img_size=64),
               "timm.create_model('deit_tiny_distilled_patch16_224', img_size=64)",
               ["vit", "deit", "attention"], dynamo=False, opset=17),
    image_spec("timm-swin-w4", _swin(),
               "timm.create_model('swin_tiny_patch4_window7_224', img_size=64, window_size=4, "
               "embed_dim=48, num_heads=(3,6,12,24), num_classes=100)", ["swin", "attention"]),
    image_spec("timm-pvt-v2-b0", _timm("pvt_v2_b0"), "timm.create_model('pvt_v2_b0')",
               ["vit", "attention", "spatial-reduction"]),
    image_spec("timm-levit-128s", _timm("levit_128s", img_size=64),
               "timm.create_model('levit_128s', img_size=64)",
               ["vit", "attention", "batchnorm-attention"]),
    image_spec("timm-mobilevit-xxs", _timm("mobilevit_xxs"), "timm.create_model('mobilevit_xxs')",
               ["vit", "attention", "depthwise", "unfold"]),
    image_spec("timm-edgenext-xx-small", _timm("edgenext_xx_small"),
               "timm.create_model('edgenext_xx_small')", ["convnext", "attention", "depthwise"]),
    image_spec("timm-efficientformerv2-s0", _timm("efficientformerv2_s0", img_size=64),
               "timm.create_model('efficientformerv2_s0', img_size=64)", ["vit", "attention", "depthwise"]),
    image_spec("timm-gmlp-ti16", _timm("gmlp_ti16_224", img_size=64),
               "timm.create_model('gmlp_ti16_224', img_size=64)", ["mlp-mixer", "gating"]),
    image_spec("timm-xcit-nano", _timm("xcit_nano_12_p16_224", img_size=64),
               "timm.create_model('xcit_nano_12_p16_224', img_size=64)",
               ["vit", "attention", "cross-covariance"]),
    image_spec("timm-lcnet-050", _timm("lcnet_050"), "timm.create_model('lcnet_050')",
               ["cnn", "depthwise", "se", "hardswish"], opset=17),
    image_spec("timm-ghostnetv2-100", _timm("ghostnetv2_100", num_classes=100),
               "timm.create_model('ghostnetv2_100', num_classes=100)",
               ["cnn", "depthwise", "concat", "se", "attention-gating"], dynamo=False, opset=17),
    image_spec("hf-segformer-tiny", _segformer(),
               "transformers SegformerForSemanticSegmentation(depths 1-1-1-1, hidden 16-32-64-128, "
               "decoder 64, 4 labels), output logits", ["segmentation", "attention", "resize"]),
    image_spec("timm-poolformer-s12", _timm("poolformer_s12", num_classes=100),
               "timm.create_model('poolformer_s12', num_classes=100)",
               ["metaformer", "groupnorm", "pooling"]),
    image_spec("tv-raft-small", _raft(),
               "torchvision.models.optical_flow.raft_small(weights=None), num_flow_updates=2, "
               "the two frames stacked on the channel axis", ["optical-flow", "correlation",
               "grid-sample", "gru"], shape=(1, 6, 128, 128), dynamo=False, opset=17),
    image_spec("timm-repvgg-a0", _timm("repvgg_a0"), "timm.create_model('repvgg_a0')",
               ["cnn", "residual", "multi-branch"]),
]
