"""Fine-tune a pretrained 256x256 face model (google/ddpm-celebahq-256) on your own faces.

The MNIST seed's last step: instead of training from scratch, start from a released
diffusers pipeline (DDPM, Ho et al. 2020: a 6-level UNet of 113.7M parameters, linear
T=1000 schedule, eps prediction) and train it a little on a folder of face images with a
small learning rate. The model and diffusion settings come from the pipeline folder
(experiments/runs/finetune.py); the data are PNG/JPEG files found recursively under
``data.path``, centre-cropped and resized to 256x256.

Get the pipeline folder on a machine with network access, then copy it here:

    python -c "from diffusers import DDPMPipeline; \\
        DDPMPipeline.from_pretrained('google/ddpm-celebahq-256') \\
        .save_pretrained('ddpm-celebahq-256')"

    python -m experiments.train --config configs/faces_finetune.py --workdir runs/faces \\
        --config.init_from=ddpm-celebahq-256 --config.data.path=/path/to/faces

Memory: a step at batch 1, 256x256 peaked at 7.8 GB resident on CPU (README: "Pretrained
diffusers weights"); ``model.remat`` rematerialises every resnet and attention block, which
matters for larger batches (at batch 1 the optimizer's buffers set the peak).
"""

from configs import common


def get_config():
    config = common.base_config()
    config.init_from = "ddpm-celebahq-256"
    config.data.update(
        source="folder", name="faces", image_size=256, channels=3, batch_size=1
    )
    # Replaced by the pipeline's UNet; only these training choices are kept.
    config.model.update(name="unet", dtype="float32", remat=True, dropout=0.0)
    config.finetune.update(learning_rate=1e-5, frozen="")
    config.train.update(
        steps=2000,
        warmup_steps=50,
        grad_clip=1.0,
        ema_decay=0.999,
        ema_start_step=0,  # the average starts at the pretrained weights
        cond_drop_prob=0.0,  # unconditional
        log_every=10,
        sample_every=500,
        checkpoint_every=100,
    )
    config.sample.update(sampler="ddim", steps=25, eta=0.0, guidance_scale=0.0, num=4)
    return config
