"""The latent pipeline end to end on 16x16 digits, tiny models: experiments.train trains an
autoencoder (configs/mnist_vae.py's kind), then a DiT on its cached latents
(configs/mnist_latent_dit.py's kind): the cache holds the encoder's posterior means times
the scale factor, the train batches are those latents (the train step has no encoder in
it), and experiments.sample / evaluate decode the samples into images."""

import json

import numpy as np
import pytest

from configs import mnist_latent_dit, mnist_vae
from experiments.runs import builders, evaluation, kinds, latent, sampling, train_loop
from jaxdiff import latent_cache


def tiny_vae():
    config = mnist_vae.get_config()
    config.data.update(source="digits", name="digits", split=None, resize_to=12,
                       image_size=16, batch_size=16)
    config.model.update(block_out_channels=(8, 8), norm_num_groups=4)
    config.train.update(steps=4, warmup_steps=0, ema_start_step=0, log_every=2,
                        sample_every=4, checkpoint_every=4)
    return config


def tiny_latent(ae_workdir, cache_dir):
    config = mnist_latent_dit.get_config()
    config.data = tiny_vae().data
    config.latent.update(autoencoder_workdir=str(ae_workdir), cache_dir=str(cache_dir),
                         shard_size=500)
    config.model.update(hidden_size=32, depth=1, num_heads=2)
    config.diffusion.num_timesteps = 20
    config.train.update(steps=2, warmup_steps=0, ema_start_step=0, log_every=1,
                        sample_every=2, checkpoint_every=2)
    config.sample.update(steps=3, num=2)
    return config


@pytest.mark.slow
def test_vae_then_latent_dit_then_sample_and_evaluate(tmp_path):
    ae = tmp_path / "vae"
    train_loop.train_and_evaluate(tiny_vae(), str(ae))
    assert json.loads((ae / "reconstruction.json").read_text())["step"] == 4
    assert len(list((ae / "reconstructions").glob("step_*.png"))) == 1
    # experiments.evaluate on an autoencoder run: the reconstruction error of the same 16
    # images with the same EMA params as the preview's, batched differently.
    report = evaluation.evaluate(ae, num=16, batch_size=8)
    preview = json.loads((ae / "reconstruction.json").read_text())
    assert report["num_images"] == 16
    np.testing.assert_allclose([report["mse"], report["l1"]], [preview["mse"], preview["l1"]],
                               rtol=1e-5)

    cache = tmp_path / "cache"
    config = tiny_latent(ae, cache)
    resolved = kinds.kind_of(config).resolve(config)
    assert builders.image_shape(resolved, batch=3) == (3, 8, 8, 4)  # f = 2, 4 channels
    batch = next(iter(kinds.kind_of(config).build_data(resolved)))
    stored = latent_cache.load_latent_cache(cache)
    assert stored["num_records"] == 1797  # every digit, 4 shards
    assert abs(float(stored["latents"][:500].std()) - 1) < 1e-4  # "auto": the first shard's
    # The batches are cached latents, not images: every row is one of the cache's rows.
    rows = stored["latents"].reshape(len(stored["latents"]), -1)
    for row in np.asarray(batch["image"]).reshape(len(batch["image"]), -1):
        assert np.min(np.abs(rows - row).max(axis=1)) == 0

    # The cache equals encoding on the fly through the autoencoder's EMA params.
    vae, params = latent.load_autoencoder(resolved)
    _, records = latent.image_records(resolved)
    images, labels = records(0, 5)
    mean, _ = vae.apply({"params": params}, images, method="encode")
    np.testing.assert_allclose(stored["latents"][:5], mean * stored["scaling_factor"],
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(stored["labels"][:5], labels)

    workdir = tmp_path / "ldm"
    train_loop.train_and_evaluate(config, str(workdir))
    assert list((workdir / "samples").glob("step_*.png"))
    out = sampling.sample(str(workdir), labels="1,7", num=2, out=str(tmp_path / "s"))
    assert out["images"].shape == (4, 16, 16, 1)  # decoded: images, not latents
    report = evaluation.evaluate(workdir, samplers=["ddim"], steps=[3], guidance=[0.0],
                                 num=20, batch_size=20, classifier_steps=5, max_real=200)
    result = report["results"][0]
    assert np.isfinite(result["fid"]) and 0 <= result["accuracy"] <= 1
