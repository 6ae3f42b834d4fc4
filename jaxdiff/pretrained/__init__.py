"""diffusers ``UNet2DModel`` and pipeline folders in and out, with safetensors (no torch).

A diffusers UNet folder holds ``config.json`` (the ``UNet2DModel(**config)`` arguments)
and ``diffusion_pytorch_model.safetensors`` (the PyTorch state dict); a pipeline folder
(``DDPMPipeline.save_pretrained``, the ``google/ddpm-*`` repositories) holds
``model_index.json``, ``unet/`` and ``scheduler/scheduler_config.json``. jaxdiff's
``UNet`` has UNet2DModel's parameter tree (table in ``jaxdiff.models.unet``), so the
conversion is renaming and transposing (``jaxdiff.pretrained.unet2d``).

``load_diffusers_unet(path) -> (model, params)``; ``save_diffusers_unet(model, params,
path)``; ``load_diffusers_pipeline(path) -> Pretrained`` (model, params, schedule,
prediction, sampler options).

``load_diffusers_autoencoder(path) -> (model, params)`` and ``save_diffusers_autoencoder``
do the same for ``AutoencoderKL`` folders (``autoencoder``).

``load_diffusers_dit(path) -> (model, params)`` and ``save_diffusers_dit`` read and write
``DiTTransformer2DModel`` folders (``dit``); ``load_dit_pipeline(path) -> LatentPipeline``
reads a ``DiTPipeline`` folder (``dit_pipeline``).

``unet2d`` maps UNet2DModel's config and state dict onto jaxdiff's ``UNet``; ``folders``
reads and writes UNet folders; ``pipeline`` reads and writes pipeline folders and their
scheduler configs.
"""

from jaxdiff.pretrained.autoencoder import (
    autoencoder_kwargs,
    diffusers_autoencoder_config,
    load_diffusers_autoencoder,
    save_diffusers_autoencoder,
)
from jaxdiff.pretrained.dit import (
    diffusers_dit_config,
    dit_kwargs,
    load_diffusers_dit,
    save_diffusers_dit,
)
from jaxdiff.pretrained.dit_pipeline import (
    GET_A_DIT_PIPELINE,
    LatentPipeline,
    is_dit_pipeline,
    load_dit_pipeline,
)
from jaxdiff.pretrained.folders import (
    CONFIG_NAME,
    GET_A_PIPELINE,
    WEIGHTS_NAME,
    load_diffusers_unet,
    load_json,
    save_diffusers_unet,
)
from jaxdiff.pretrained.pipeline import (
    PREDICTIONS,
    VARIANCES,
    Pretrained,
    load_diffusers_pipeline,
    sampling_settings,
    save_diffusers_pipeline,
    schedule_from_scheduler_config,
    scheduler_config,
)
from jaxdiff.pretrained.unet2d import (
    NULL_LABEL_KEY,
    OLD_ATTENTION_NAMES,
    UnsupportedConfigError,
    diffusers_config,
    params_from_state_dict,
    state_dict_from_params,
    unet_kwargs,
)

__all__ = [
    "GET_A_DIT_PIPELINE",
    "LatentPipeline",
    "diffusers_dit_config",
    "dit_kwargs",
    "is_dit_pipeline",
    "load_diffusers_dit",
    "load_dit_pipeline",
    "save_diffusers_dit",
    "autoencoder_kwargs",
    "diffusers_autoencoder_config",
    "load_diffusers_autoencoder",
    "save_diffusers_autoencoder",
    "CONFIG_NAME",
    "GET_A_PIPELINE",
    "NULL_LABEL_KEY",
    "OLD_ATTENTION_NAMES",
    "PREDICTIONS",
    "VARIANCES",
    "WEIGHTS_NAME",
    "Pretrained",
    "UnsupportedConfigError",
    "diffusers_config",
    "load_diffusers_pipeline",
    "load_diffusers_unet",
    "load_json",
    "params_from_state_dict",
    "sampling_settings",
    "save_diffusers_pipeline",
    "save_diffusers_unet",
    "schedule_from_scheduler_config",
    "scheduler_config",
    "state_dict_from_params",
    "unet_kwargs",
]
