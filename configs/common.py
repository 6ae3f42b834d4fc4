"""The defaults every experiment config starts from; each ``configs/<name>.py`` changes a few.

Configs are data: ``get_config()`` returns an ``ml_collections.ConfigDict`` and any field can
be overridden on the command line (``--config.train.steps=2000``). Optional paths are typed
placeholders, so ``--config.data.manual_dir=/path`` parses as a string.
"""

import ml_collections
from ml_collections import config_dict


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    # Where the images come from (jaxdiff.data). source: "tfds" | "idx" | "npy" | "digits" |
    # "folder" (PNG/JPEG files under data.path).
    config.data = dict(
        source="tfds",
        name="mnist",
        split="train",
        path=config_dict.placeholder(str),  # idx: directory with the *-ubyte(.gz) files
        class_folders=False,  # folder: sub-folder names are the class labels
        data_dir=config_dict.placeholder(str),  # tfds: where prepared datasets live
        manual_dir=config_dict.placeholder(str),  # tfds: downloaded archives, for offline use
        images_path=config_dict.placeholder(str),  # npy: (N, H, W, C) uint8 images
        labels_path=config_dict.placeholder(str),  # npy: (N,) int labels or (N, D) contexts
        image_size=28,  # what the model sees
        resize_to=config_dict.placeholder(int),  # resize to this, then zero-pad to image_size
        channels=1,
        batch_size=128,
        worker_count=0,  # grain worker processes; 0 reads in the training process
    )

    # Fields other than ``name`` go to the module as attributes (jaxdiff.models.build).
    config.model = dict(name="unet", dtype="float32")

    config.diffusion = dict(
        schedule="linear",  # "linear" (DDPM sec. 4) | "cosine" (Improved DDPM eq. 17)
        num_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        prediction="eps",  # "eps" | "x0" | "v"
        loss="denoising",  # "denoising" | "corruption" (the from-scratch baseline)
        loss_weighting="none",  # "none" | "min_snr"
    )

    config.train = dict(
        steps=10_000,
        learning_rate=2e-4,
        warmup_steps=500,
        cosine_decay=False,
        grad_clip=1.0,
        weight_decay=0.0,
        ema_decay=0.999,
        ema_start_step=1000,  # EMA only after some training (the seeds' 2nd optimization)
        cond_drop_prob=0.1,  # classifier-free guidance: 10% of labels dropped
        log_every=100,
        sample_every=2000,
        checkpoint_every=1000,
        keep_checkpoints=3,
        seed=0,
    )

    # Fine-tuning (experiments/runs/finetune.py): start from a diffusers folder or a jaxdiff
    # workdir; the model and diffusion settings then come from there.
    config.init_from = config_dict.placeholder(str)
    config.finetune = dict(
        learning_rate=config_dict.placeholder(float),  # replaces train.learning_rate
        frozen="",  # comma list of parameter-path prefixes kept fixed, e.g. "down_blocks"
    )

    # Devices: data parallel over all of them; fsdp=K also shards params, optimizer state and
    # EMA K ways (jaxdiff.train.state_shardings), for models too big to replicate.
    config.mesh = dict(fsdp=1)

    # Previews during training and the defaults of experiments/sample.py.
    config.sample = dict(
        sampler="ddim",  # "ddpm" | "ddpm_no_noise" | "ddim" | "dpm_solver_pp" | "corruption"
        steps=50,  # ddim / dpm_solver_pp / corruption steps; ddpm walks all num_timesteps
        # "linspace" | "trailing" | "leading" (samplers.timestep_grid); None: the sampler's
        spacing=config_dict.placeholder(str),
        eta=0.0,
        guidance_scale=0.0,  # CFG w: out = (1 + w) cond - w uncond; 0 = plain conditional
        num=8,  # images per class row (conditional models) or in total (unconditional)
    )
    return config
