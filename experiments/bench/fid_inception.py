"""The benchmark's ``fid_inception`` section: images/s of FID feature extraction, jaxdiff
(``jaxdiff.fid.inception_features``: uint8 quantisation, the 299x299 bilinear resize and the
Inception-V3, jit-compiled) against pytorch-fid's ``InceptionV3`` as its ``get_activations``
calls it (``inference_mode``), in one process, on the same ``--fid_batch`` random images of
``--image_size`` (both resize them to 299x299: the cost hardly depends on the input size).

Both networks have the same random weights (``pytorch_fid_twin.random_fid_inception``),
and the section checks that their features agree before it times them. Needs torch,
torchvision and pytorch_fid (docs/fid.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from experiments.bench import pytorch_fid_twin
from experiments.bench.timing import interleaved_times, make_rows
from jaxdiff import fid, inception

TORCH_VARIANT = "pytorch-fid InceptionV3"


def bench_fid_inception(cfg: dict[str, Any], variant_kw: dict) -> list[dict[str, Any]]:
    del variant_kw
    import torch

    model, state_dict = pytorch_fid_twin.random_fid_inception(seed=0)
    params = inception.params_from_state_dict({k: v.numpy() for k, v in state_dict.items()})
    b, s = cfg["fid_batch"], cfg["image_size"]
    levels = np.random.default_rng(0).integers(0, 256, (b, s, s, 3)).astype(np.float32)
    images = levels / 127.5 - 1.0  # on uint8 levels: quantisation changes nothing
    x = torch.from_numpy(levels / 255.0).permute(0, 3, 1, 2).contiguous()

    def torch_features():
        with torch.inference_mode():
            return model(x)[0].squeeze(3).squeeze(2).numpy()

    ours = fid.inception_features(params, images, batch_size=b)  # compiles
    theirs = torch_features()
    np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-3 * np.abs(theirs).max())
    fns = {
        "jaxdiff inception_features (jit)": lambda: fid.inception_features(
            params, images, batch_size=b),
        TORCH_VARIANT: torch_features,
    }
    times = interleaved_times(fns, repeats=cfg["repeats"], warmup=cfg["warmup"])
    return make_rows(f"FID Inception features {s}x{s}", times, images_per_call=b,
                     reference=TORCH_VARIANT)
