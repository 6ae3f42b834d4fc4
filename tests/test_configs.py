"""configs/*.py build valid runs; overrides parse; validation names the bad field."""

import importlib

import pytest
from absl import flags
from ml_collections import config_flags

from experiments.runs import builders, kinds, validation
from experiments.runtime import errors
from jaxdiff.models.basic_unet import BasicUNet
from jaxdiff.models.context_unet import ContextUnet
from jaxdiff.models.unet import UNet

CONFIGS = ["mnist", "digits", "sprites", "fashion_mnist", "cifar10"]


def load(name):
    return importlib.import_module(f"configs.{name}").get_config()


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds_a_conditional_model_that_fits_its_images(name):
    config = load(name)
    validation.validate_config(config, num_devices=1)
    model = kinds.build_model(config)  # abstract init + apply: no compile
    assert isinstance(model, ContextUnet if name == "sprites" else UNet)
    num_classes, context_dim = builders.cond_spec(model)
    assert (num_classes, context_dim) == ((5, 5) if name == "sprites" else (10, None))
    schedule = builders.build_schedule(config)
    assert schedule.num_timesteps == config.diffusion.num_timesteps
    builders.build_optimizer(config)
    if config.sample.guidance_scale > 0:
        assert config.train.cond_drop_prob > 0  # CFG needs the null condition trained


def test_corruption_baseline_config_pairs_loss_model_and_sampler():
    config = load("digits_corruption")
    validation.validate_config(config, num_devices=1)
    assert isinstance(kinds.build_model(config), BasicUNet)
    assert (config.diffusion.loss, config.sample.sampler) == ("corruption", "corruption")
    config.sample.sampler = "ddim"  # the naive model has no noise schedule to walk
    with pytest.raises(errors.ConfigError, match="corruption"):
        validation.validate_config(config, num_devices=1)


def test_seed_hyperparameters():
    mnist, sprites = load("mnist"), load("sprites")
    assert (mnist.data.source, mnist.diffusion.schedule, mnist.diffusion.num_timesteps) == (
        "tfds",
        "linear",
        1000,
    )
    assert mnist.sample.sampler == "ddim" and mnist.train.ema_decay > 0
    d = sprites.diffusion
    assert (d.num_timesteps, d.beta_start, d.beta_end) == (500, 1e-4, 0.02)
    assert (sprites.model.n_feat, sprites.model.n_cfeat, sprites.data.image_size) == (64, 5, 16)
    assert sprites.data.channels == 3 and sprites.data.source == "npy"


def test_sprites_model_follows_schedule_and_image_size():
    config = load("sprites")
    config.diffusion.num_timesteps = 100
    config.data.image_size = 24
    assert (config.model.num_timesteps, config.model.height) == (100, 24)


def parse(argv):
    flag_values = flags.FlagValues()
    # config_flags finds the override flags in the argv it is defined with (sys.argv in a CLI).
    config_flags.DEFINE_config_file(
        "config", None, flag_values=flag_values, lock_config=True, sys_argv=["prog", *argv]
    )
    errors.parse_flags(["prog", *argv], flag_values=flag_values)
    return flag_values.config


def test_command_line_overrides():
    config = parse(
        [
            "--config=configs/digits.py",
            "--config.train.steps=7",
            "--config.data.manual_dir=/data/manual",
            "--config.model.block_out_channels=(16,32)",
            "--config.sample.guidance_scale=0.5",
        ]
    )
    assert config.train.steps == 7
    assert config.data.manual_dir == "/data/manual"  # a placeholder takes a string
    assert tuple(config.model.block_out_channels) == (16, 32)
    assert config.sample.guidance_scale == 0.5


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "--config.train.stepz=3",
            "--config.train.stepz: the config has no field 'train.stepz' (did you mean "
            "--config.train.steps?)",
        ),
        (
            "--config.trainn.steps=3",
            "the config has no field 'trainn.steps' (did you mean --config.train.steps?)",
        ),
        ("--config.train.steps=abc", "--config.train.steps=abc: invalid literal for int()"),
    ],
)
def test_bad_override_is_one_line(override, message, capsys):
    with pytest.raises(SystemExit) as info:
        parse(["--config=configs/digits.py", override])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_missing_config_file_is_one_line(capsys):
    flag_values = flags.FlagValues()
    config = config_flags.DEFINE_config_file("config", None, flag_values=flag_values)
    errors.parse_flags(["prog", "--config=configs/nope.py"], flag_values=flag_values)
    with pytest.raises(SystemExit), errors.exit_on_user_error():
        config.value.train  # noqa: B018  (config_flags raises on first use of a bad file)
    assert "configs/nope.py" in capsys.readouterr().err


def _set(config, dotted, value):
    *parents, leaf = dotted.split(".")
    node = config
    for p in parents:
        node = node[p]
    node[leaf] = value


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("train.steps", 0, "train.steps must be a positive integer, got 0"),
        ("train.checkpoint_every", -5, "train.checkpoint_every must be a positive integer"),
        ("data.batch_size", 6, "data.batch_size=6 does not split over 4 devices"),
        ("model.name", "vit", "model.name must be one of"),
        ("sample.sampler", "euler", "sampler must be one of"),
        ("diffusion.schedule", "sigmoid", "diffusion.schedule must be one of"),
        ("diffusion.prediction", "score", "diffusion.prediction must be one of"),
        ("train.learning_rate", -1.0, "train.learning_rate must be > 0"),
        ("sample.steps", 500, "ddim steps=500 exceed diffusion.num_timesteps=200"),
    ],
)
def test_validate_config_names_the_field(field, value, message):
    config = load("digits")
    _set(config, field, value)
    with pytest.raises(errors.ConfigError, match=message.replace("(", r"\(")):
        validation.validate_config(config, num_devices=4)


def test_guidance_needs_a_conditional_model():
    config = load("digits")
    config.model.num_classes = None
    config.sample.guidance_scale = 2.0
    with pytest.raises(errors.ConfigError, match="needs a conditional model"):
        validation.validate_config(config, num_devices=1)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("data.image_size", 15, "cannot take 15x15x1 images .* must be divisible by"),
        ("model.norm_num_groups", 5, "norm_num_groups=5 must divide every channel count"),
        ("model.block_width", 3, "has no attribute"),
    ],
)
def test_model_that_does_not_fit_is_a_config_error(field, value, message):
    config = load("digits")
    config.unlock()
    _set(config, field, value)
    with pytest.raises(errors.ConfigError, match=message):
        kinds.build_model(config)
