"""Augmentations built from config keep the images' size: a crop without `size` crops at it, any other refused."""
import pytest
import torch

from dfkd.augment import CIFAR_AUGMENT, build_augment


@pytest.mark.parametrize("hw", [(12, 12), (32, 32)])
def test_the_default_crop_and_flip_keeps_the_images_size(hw):
    torch.manual_seed(0)
    x = torch.rand(4, 3, *hw)
    y = build_augment(CIFAR_AUGMENT, hw)(x)
    assert y.shape == x.shape
    assert not torch.equal(y, x)  # a padded crop moved the images


def test_a_crop_of_another_size_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"size \[32, 32\] differs from the images' size \[12, 12\].*drop `size`"):
        build_augment([{"name": "RandomCrop", "size": [32, 32], "padding": 4}], (12, 12))


def test_a_crop_of_the_images_own_size_is_kept_and_a_sizeless_one_needs_the_image_size():
    assert build_augment([{"name": "RandomCrop", "size": 12, "padding": 1}], (12, 12))(torch.rand(2, 1, 12, 12)).shape \
        == (2, 1, 12, 12)
    with pytest.raises(ValueError, match="needs a `size`"):
        build_augment([{"name": "RandomCrop", "padding": 1}])
