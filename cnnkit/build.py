"""From a resolved config to the objects a run needs: the input shape and the model."""

from __future__ import annotations

import copy

import torch
from torch import nn

from cnnkit.config import Config
from cnnkit.data.datasets import DATASETS, data_shape, known_class_count
from cnnkit.errors import ConfigError
from cnnkit.models import MODELS, build_model
from cnnkit.models.external import check_output, split_name


def input_shape(config: Config) -> tuple[int, int, int]:
    """(C, H, W) the model sees: from model.* when set, else from the data section (the dataset's own
    size or data.input_size; one channel with data.grayscale)."""
    channels, height, width = data_shape(config.data)
    channels = config.model.in_channels or channels
    size = tuple(config.model.input_size) if config.model.input_size else (height, width)
    return (channels, *size)  # type: ignore[return-value]


# Sizes have their own model.* keys; passing them in model.kwargs too would be ambiguous.
RESERVED_KWARGS = ("in_channels", "num_classes", "input_size", "name")


def model_from_config(config: Config, num_classes: int | None = None, *, data_root: str | None = None) -> nn.Module:
    """The model the config names, sized for its input and for `num_classes` (the loaded data's; None:
    as class_count says before the data loads, with `data_root` being --data-root)."""
    clash = [k for k in RESERVED_KWARGS if k in config.model.kwargs]
    if clash:
        raise ConfigError(f"model.kwargs.{clash[0]}: set model.{clash[0]} instead of passing it in model.kwargs")
    channels, height, width = input_shape(config)
    model = build_model(config.model.name, in_channels=channels,
                        num_classes=class_count(config, num_classes, data_root), input_size=(height, width),
                        cifar_stem=config.model.cifar_stem, **config.model.kwargs)
    if num_classes is not None and DATASETS[config.data.dataset].num_classes is None:
        # An image folder's classes are known for sure once it has loaded (check_model_fits may not have
        # found the folder before): a model from outside the registry is checked against them now.
        check_model_fits(config, model, num_classes, data_root)
    return model


class _NotGiven:
    """check_model_fits' default for `data_root`: the caller did not say where the data will be read."""

    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN = _NotGiven()


# Before an image folder is found, a model is sized for this many classes: enough for the shapes-only
# build on the meta device (check_model_builds) — the run builds its model again from the loaded data.
UNKNOWN_CLASSES = 2


def class_count(config: Config, num_classes: int | None = None, data_root: str | None = None) -> int:
    """The classes the model scores: model.num_classes, else the data's (as loaded, else as the dataset
    has them: its registered number, or an image folder's class folders where a run would look; see
    cnnkit.data.known_class_count). An image folder not found yet gives UNKNOWN_CLASSES."""
    return (config.model.num_classes or num_classes or known_class_count(config.data, data_root)
            or UNKNOWN_CLASSES)


def check_model_builds(config: Config, data_root: str | None | _NotGiven = NOT_GIVEN) -> None:
    """Build the model on the meta device (shapes only: no memory, no data, no time) and its
    optimisers on those parameters. A constructor's own range error (`model.kwargs.widths=[0,64,64]`)
    or optimiser kwargs meant for another optimiser (lenet.yaml's Adam betas under
    `--set optim.name=sgd`) are then one ConfigError line before the data loads, not after."""
    from cnnkit.optim.registry import build_optimizers

    with torch.device("meta"):
        model = model_from_config(config, data_root=None if data_root is NOT_GIVEN else data_root)
        build_optimizers(model, config.optim, config.train.batch_size)
    check_model_fits(config, model, data_root=data_root)


def check_model_fits(config: Config, model: nn.Module, num_classes: int | None = None,
                     data_root: str | None | _NotGiven = NOT_GIVEN) -> None:
    """A model from outside the registry (a user's, torchvision's, timm's) takes the data's images and
    scores its classes: one forward pass on the meta device. Registry models size themselves from the
    config, and their constructors say which layer an input is too small for.

    `num_classes`: the loaded data's; before it loads, the dataset's number, or an image folder's class
    folders counted where the run will look: `data_root` is its --data-root (None: none given). A caller
    that does not pass `data_root` cannot say where that is, so an image folder's classes are checked
    only once it has loaded (model_from_config with the data's classes), never against another folder."""
    if config.model.name in MODELS:
        return
    count = config.model.num_classes or num_classes
    if count is None and (DATASETS[config.data.dataset].num_classes is not None or data_root is not NOT_GIVEN):
        count = known_class_count(config.data, None if data_root is NOT_GIVEN else data_root)
    if count is None:
        return
    check_output(model, input_shape(config), count, config.model.name)


def views_break_channels_last(config: Config, model: nn.Module | None = None) -> bool:
    """Whether the model's forward calls `.view()` on maps that channels_last lays out otherwise (the zoos'
    `x.view(x.size(0), -1)` before a linear layer). Asked of a user's own code only (module:Name,
    file.py:Name, a model object): cnnkit's, torchvision's and timm's models flatten with nn.Flatten or
    .flatten(). One image through a CPU copy: the meta device keeps convolutions' outputs NCHW, so it
    cannot tell. A model that cannot be built is check_model_builds' to report."""
    if model is None and split_name(config.model.name)[0] != "import":
        return False
    try:
        probe = model_from_config(config) if model is None else copy.deepcopy(model).cpu()
        probe = probe.to(memory_format=torch.channels_last).eval()
        image = torch.zeros(1, *input_shape(config)).to(memory_format=torch.channels_last)  # (1, C, H, W)
        with torch.no_grad():
            probe(image)
    except RuntimeError as exc:
        return "view size is not compatible" in str(exc)
    except Exception:  # noqa: BLE001  (any other failure is check_model_builds' to say, in its own words)
        return False
    return False
