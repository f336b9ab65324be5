import pytest

from convnext_export.config import ConvNeXtConfig, UnknownSizeError, find_config, get_config, register_size, size_names

PUBLISHED = {  # REFERENCE.md: timm results tables / paper
    "atto": ((2, 2, 6, 2), (40, 80, 160, 320)),
    "femto": ((2, 2, 6, 2), (48, 96, 192, 384)),
    "pico": ((2, 2, 6, 2), (64, 128, 256, 512)),
    "nano": ((2, 2, 8, 2), (80, 160, 320, 640)),
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "small": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
    "xlarge": ((3, 3, 27, 3), (256, 512, 1024, 2048)),
}


def test_registry_has_the_published_sizes():
    assert size_names() == list(PUBLISHED)
    for name, (depths, dims) in PUBLISHED.items():
        config = get_config(name)
        assert (config.depths, config.dims) == (depths, dims)
        assert config.num_classes == 1000 and config.layer_scale_init == 1e-6 and config.norm_eps == 1e-6
        assert find_config(depths, dims).name == name


def test_unknown_size_lists_valid_sizes():
    with pytest.raises(UnknownSizeError) as error:
        get_config("huge")
    assert "huge" in str(error.value) and "atto" in str(error.value) and "xlarge" in str(error.value)


def test_duplicate_registration_raises():
    def convnext_tiny() -> ConvNeXtConfig:
        return ConvNeXtConfig("tiny", (1, 1, 1, 1), (8, 8, 8, 8))

    with pytest.raises(ValueError, match="registered twice"):
        register_size(convnext_tiny)


def test_config_round_trips_through_dict_and_is_frozen():
    config = get_config("nano", num_classes=7)
    assert ConvNeXtConfig.from_dict(config.to_dict()) == config
    with pytest.raises(AttributeError):
        config.num_classes = 3  # type: ignore[misc]
