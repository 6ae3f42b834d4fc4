"""pytorch-fid's ``InceptionV3`` as a twin of ``jaxdiff.inception`` (tests and benchmark).

``import_pytorch_fid()`` imports ``pytorch_fid.inception`` and ``pytorch_fid.fid_score``.
pytorch-fid builds its network from torchvision's pure-Python ``torchvision.models.inception``;
``experiments.bench.torchvision_ops`` makes torchvision importable beside a CPU-only torch.

``random_fid_inception(seed)`` builds pytorch-fid's ``InceptionV3`` (the 2048-d pool block)
without downloading its weights: the FID Inception (``fid_inception_v3``) is made with
PyTorch's default initialisation, the batch norms get random scales and shifts, and one
forward pass in training mode on random 80x80 images sets every batch norm's running statistics
(``momentum=None``: the batch's own), so each layer's activations are normalised and the
2048 features are far from constant. Returns ``(model, state_dict)``; the state dict has
the key names of the published ``pt_inception-2015-12-05-6726825d.pth``.
"""

from __future__ import annotations

from typing import Any

NEEDS = ("pytorch-fid needs torch, torchvision and pytorch_fid: pip install -r "
         "requirements-bench.txt (docs/fid.md)")


def import_pytorch_fid() -> tuple[Any, Any]:
    """``(pytorch_fid.inception, pytorch_fid.fid_score)``; ImportError with ``NEEDS`` when a
    package is missing."""
    from experiments.bench import torchvision_ops

    torchvision_ops.ensure_importable()
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
        from pytorch_fid import fid_score, inception
    except ImportError as e:
        raise ImportError(NEEDS) from e
    return inception, fid_score


def random_fid_inception(seed: int = 0, *, calibration_size: int = 80) -> tuple[Any, dict]:
    """pytorch-fid's ``InceptionV3([3])`` with random weights (see the module docstring),
    in eval mode, and the state dict of its inner FID Inception-V3."""
    pfi, _ = import_pytorch_fid()  # first: it makes torchvision importable
    import torch
    import torchvision.models.inception as tv_inception

    built = []
    original_build, original_url = pfi.fid_inception_v3, pfi.load_state_dict_from_url
    original_load = tv_inception.Inception3.load_state_dict

    def build():
        built.append(original_build())
        return built[-1]

    try:  # the published weights are downloaded by fid_inception_v3: skip that load
        pfi.fid_inception_v3 = build
        pfi.load_state_dict_from_url = lambda *args, **kwargs: {}
        tv_inception.Inception3.load_state_dict = lambda self, *args, **kwargs: None
        torch.manual_seed(seed)
        model = pfi.InceptionV3([pfi.InceptionV3.DEFAULT_BLOCK_INDEX])
    finally:
        pfi.fid_inception_v3, pfi.load_state_dict_from_url = original_build, original_url
        tv_inception.Inception3.load_state_dict = original_load
    generator = torch.Generator().manual_seed(seed + 1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 1.5, generator=generator)
            module.bias.data.uniform_(-0.2, 0.2, generator=generator)
            module.momentum = None
    # At a small input size (the network runs at any size >= 75): the statistics only have
    # to keep the activations on a sensible scale, and 299x299 costs 16x more.
    images = torch.rand(2, 3, calibration_size, calibration_size, generator=generator)
    model.train()
    model.resize_input = False
    with torch.no_grad():
        model(images)
    model.resize_input = True
    model.eval()
    return model, built[-1].state_dict()


def torch_features(model: Any, images_01: Any) -> Any:
    """(B, 2048) numpy features of pytorch-fid's model for NHWC numpy images in [0, 1]
    (3 channels), as ``fid_score.get_activations`` computes them."""
    import numpy as np
    import torch

    x = torch.from_numpy(np.ascontiguousarray(np.asarray(images_01, np.float32)))
    with torch.inference_mode():
        pred = model(x.permute(0, 3, 1, 2))[0]
    return pred.squeeze(3).squeeze(2).numpy()
