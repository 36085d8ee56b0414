"""Images that are not 8-bit RGB (#28 item 7): ``--in_chans 1`` keeps grey images grey, ``--bit_depth 16`` keeps
16-bit PNG/TIFF at full range; the model's stem, its spec, the batch normalisation, the cache and the deploy
demo follow both."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from torchvision.transforms import v2

import config
from dataloader import BatchPreprocessor, create_policy, create_transform
from dataloader.cache import BatchAugment, DecodedCache
from dataloader.datasets import ClassificationDataset
from dataloader.io import ImageDecodeError, ImageTooLarge, PixelFormat, decode_pixels, decode_rgb, decode_wide, to_grey
from helpers import demo_module, encode_png16, encode_tiff16, photo16, write_digit_folders
from models import create_model, load_pretrained, load_state_dict_checked
from models.spec import ModelSpec
from models.stem import adapt_state, input_channels
from utils.checkpoint import CheckpointError
from utils.images import to_hwc

GREY8, GREY16, RGB16 = PixelFormat(1, 8), PixelFormat(1, 16), PixelFormat(3, 16)


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


# ----------------------------------------------------------------------------------------- the stem
@pytest.mark.parametrize("arch", ["simple_cnn", "resnet18", "mobilenet_v3_small", "timm/resnet10t", "efficientnet-b0",
                                  "resnest50"])
def test_the_stem_reads_in_chans(arch):
    model = create_model(arch, 3, in_chans=1).eval()
    assert first_conv(model).weight.shape[1] == 1 and input_channels(model) == 1
    assert not any(isinstance(m, nn.Conv2d) and m.in_channels == 3 for m in model.modules())
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 3)
    assert input_channels(create_model(arch, 3)) == 3


def test_adapt_state_sums_the_rgb_filters_by_hand():
    model = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False))
    rgb = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 4.0]]).view(2, 3, 1, 1)
    adapted = adapt_state(model, {"0.weight": rgb})
    assert adapted["0.weight"].flatten().tolist() == [6.0, 3.5]  # 1 + 2 + 3, -1 + 0.5 + 4


def test_pretrained_rgb_weights_load_into_a_grey_resnet(tmp_path):
    rgb = create_model("resnet18", 5).state_dict()
    torch.save(rgb, tmp_path / "rgb.pth")
    grey = create_model("resnet18", 5, in_chans=1)
    assert load_pretrained(grey, tmp_path / "rgb.pth", 5) == []
    state = grey.state_dict()
    torch.testing.assert_close(state["conv1.weight"], rgb["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(state["layer1.0.conv1.weight"], rgb["layer1.0.conv1.weight"])
    # the grey model on a grey image equals the RGB model on that image tripled (normalised alike)
    rgb_model = create_model("resnet18", 5)
    rgb_model.load_state_dict(rgb)
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(grey.eval()(x), rgb_model.eval()(x.expand(1, 3, 32, 32)), rtol=1e-4, atol=1e-5)


def test_a_grey_checkpoint_refuses_an_rgb_model():
    grey = create_model("simple_cnn", 3, in_chans=1).state_dict()
    with pytest.raises(CheckpointError, match=r"reads 1-channel images and this model 3-channel ones: build the "
                                              r"model with --in_chans 1"):
        load_state_dict_checked(create_model("simple_cnn", 3), grey, "grey.pth")


# ----------------------------------------------------------------------------------------- decoding
def test_a_16_bit_png_decodes_above_255_and_normalises_by_65535():
    values = np.array([[0, 255, 256, 1000], [40000, 65535, 32767, 12345]], dtype=np.uint16)
    data = encoded(Image.fromarray(values))
    grey16 = decode_pixels(data, fmt=GREY16)
    assert grey16.dtype == torch.uint16 and grey16.shape == (1, 2, 4)
    assert grey16[0].to(torch.int32).tolist() == values.astype(int).tolist()
    assert decode_pixels(data, fmt=RGB16).shape == (3, 2, 4)
    # 8 bits: round(x / 257), as before
    assert decode_rgb(data)[0].tolist() == [[0, 1, 1, 4], [156, 255, 127, 48]]
    batch = BatchPreprocessor([0.5], [0.25], torch.device("cpu"))(grey16[None])
    expected = (torch.tensor(values.astype(np.float64)) / 65535 - 0.5) / 0.25
    torch.testing.assert_close(batch[0, 0].double(), expected, rtol=0, atol=1e-5)
    assert batch[0, 0, 1, 0].item() == pytest.approx((40000 / 65535 - 0.5) / 0.25, abs=1e-5)


def test_16_bit_tiff_and_8_bit_images_at_16_bits():
    values = np.array([[3, 300, 60000]], dtype=np.uint16)
    tiff = decode_pixels(encoded(Image.fromarray(values), "TIFF"), fmt=GREY16)
    assert tiff.dtype == torch.uint16 and tiff[0].to(torch.int32).tolist() == [[3, 300, 60000]]
    eight = decode_pixels(encoded(Image.fromarray(np.array([[0, 1, 255]], np.uint8))), fmt=GREY16)
    assert eight[0].to(torch.int32).tolist() == [[0, 257, 65535]]  # x 257: white stays white


# 16-bit colour, written by OpenCV (PNG) and tifffile (TIFF): Pillow reads both at 8 bits
WIDE_COLOUR = {
    "png-rgb": lambda: encode_png16(photo16()),
    "png-rgba": lambda: encode_png16(photo16(alpha=True)),
    "tiff-rgb": lambda: encode_tiff16(photo16()),
    "tiff-rgba": lambda: encode_tiff16(photo16(alpha=True)),
    "tiff-deflate-big-endian": lambda: encode_tiff16(photo16(), compression="zlib", byteorder=">"),
    "tiff-planar": lambda: encode_tiff16(photo16(), planarconfig="separate"),
}


@pytest.mark.parametrize("kind", WIDE_COLOUR)
def test_16_bit_colour_png_and_tiff_decode_to_the_values_written(kind):
    data, rgb = WIDE_COLOUR[kind](), photo16().astype(np.int64)
    assert rgb.max() > 255 and (rgb % 257 != 0).mean() > 0.9  # values that 8 bits cannot hold
    wide = decode_pixels(data, fmt=RGB16)
    assert wide.dtype == torch.uint16 and wide.shape == (3, 32, 43)
    assert np.array_equal(wide.permute(1, 2, 0).numpy().astype(np.int64), rgb)  # alpha dropped, nothing rounded
    # 8 bits: round(x / 257) of each value, by hand
    assert np.array_equal(decode_rgb(data).permute(1, 2, 0).numpy(), ((rgb + 128) // 257).astype(np.uint8))
    luma = (rgb @ np.array([19595, 38470, 7471]) + 32768) >> 16
    assert np.array_equal(decode_pixels(data, fmt=GREY16)[0].numpy().astype(np.int64), luma)


def test_a_16_bit_colour_tiff_is_refused_from_its_header_and_bad_ones_say_why():
    data = encode_tiff16(photo16())
    with pytest.raises(ImageTooLarge, match=r"^big.tif: 43x32 pixels .* over the limit of 1000 pixels"):
        decode_wide(data[:400], "big.tif", max_pixels=1000)  # the header alone: refused before decoding
    with pytest.raises(ImageDecodeError, match=r"^cut.tif: cannot decode image \(truncated or corrupt 16-bit TIFF"):
        decode_wide(data[:-100], "cut.tif")
    lzw = bytearray(data)  # the same file claiming LZW, which tifffile decodes only with imagecodecs
    compression = _tag_value_offset(data, "Compression")
    lzw[compression:compression + 2] = (5).to_bytes(2, "little")
    with pytest.raises(ImageDecodeError, match=r"^lzw.tif: a 16-bit colour TIFF compressed with LZW, .*imagecodecs"):
        decode_wide(bytes(lzw), "lzw.tif")
    demo = demo_module()
    with pytest.raises(ValueError, match="compressed with LZW"):
        demo.read_image(bytes(lzw))
    with pytest.raises(demo.ImageTooLarge):
        demo.read_image(data[:400], max_pixels=1000)


def _tag_value_offset(tiff: bytes, tag: str) -> int:
    import tifffile
    with tifffile.TiffFile(io.BytesIO(tiff)) as tif:
        return tif.pages.first.tags[tag].valueoffset


def test_grey_is_pillows_luma_and_a_grey_image_stays_exact():
    rgb = np.random.default_rng(0).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    grey = decode_pixels(encoded(Image.fromarray(rgb)), fmt=GREY8)
    assert grey.shape == (1, 9, 11) and grey.dtype == torch.uint8
    assert np.array_equal(grey[0].numpy(), np.asarray(Image.fromarray(rgb).convert("L")))
    flat = rgb[..., 0]
    for fmt in ("PNG", "BMP", "JPEG"):
        data = encoded(Image.fromarray(flat), fmt)
        assert torch.equal(decode_pixels(data, fmt=GREY8), decode_rgb(data)[:1]), fmt
    wide = torch.tensor([[[1000, 65535]]], dtype=torch.int32).expand(3, 1, 2).to(torch.uint16)
    assert to_grey(wide).to(torch.int32).tolist() == [[[1000, 65535]]]


# ---------------------------------------------------------------------------- transforms, policies, cache
@pytest.mark.parametrize("fmt", [GREY8, GREY16])
def test_grey_stays_one_channel_through_the_transforms(fmt):
    image = decode_pixels(encoded(Image.fromarray(np.arange(30 * 20, dtype=np.uint16).reshape(30, 20) * 100)),
                          fmt=fmt)
    transforms = [create_transform(False, (16, 16)), create_transform(False, (16, 16), eval_resize="center_crop"),
                  create_transform(True, (16, 16), train_resize="rrc", hflip=0.5, random_erasing=0.5)]
    if fmt.bit_depth == 8:  # the per-image policies are for 8-bit values (--aug is refused at 16 bits)
        transforms += [create_transform(True, (16, 16), policy=create_policy(name))
                       for name in ("autoaugment", "randaugment", "trivialaugment", "custom")]
    for transform in transforms:
        for seed in range(3):
            torch.manual_seed(seed)
            out = transform(image)
            assert out.shape == (1, 16, 16) and out.dtype == fmt.dtype, transform


def test_a_16_bit_letterbox_keeps_the_full_range():
    image = torch.full((1, 8, 4), 40000, dtype=torch.int32).to(torch.uint16)  # tall: padded left and right
    out = create_transform(False, (16, 16))(image).to(torch.int32)
    assert out.max().item() == 40000 and out.min().item() == 0  # resized, then padded with 0


def test_the_cache_holds_16_bit_grey(tmp_path):
    root = tmp_path / "d"
    for split in ("train",):
        for c, value in (("a", 1000), ("b", 60000)):
            (root / split / c).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((8, 8), value + i, np.uint16)).save(root / split / c / f"{i}.png")
    dataset = ClassificationDataset(root, "folder", "train", transform=create_transform(False, (8, 8)),
                                    pixels=GREY16)
    cache = DecodedCache(dataset, dataset.transform)
    assert cache.images.dtype == torch.uint16 and cache.images.shape == (4, 1, 8, 8)
    assert sorted(cache.images[:, 0, 0, 0].to(torch.int32).tolist()) == [1000, 1001, 60000, 60001]
    augment = BatchAugment([v2.RandomResizedCrop(6, antialias=True), v2.RandomHorizontalFlip(0.5),
                            v2.RandomErasing(1.0, value=0)])  # the batched ops a cached training run applies
    out = augment(cache.images, [11, 12, 13, 14]).to(torch.int32)
    assert out.shape == (4, 1, 6, 6) and (out == 0).any() and set(out.flatten().tolist()) <= {0, 1000, 1001, 60000,
                                                                                                60001}


def test_the_batch_preprocessor_refuses_a_batch_of_other_channels():
    with pytest.raises(ValueError, match="3-channel images for a model that takes 1 channel"):
        BatchPreprocessor([0.5], [0.2], torch.device("cpu"))(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))


# ----------------------------------------------------------------------------------- spec and config
def test_the_spec_carries_channels_and_bit_depth():
    spec = ModelSpec("simple_cnn", ("a", "b"), (16, 16), [0.449], [0.226], in_chans=1, bit_depth=16)
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    old = {k: v for k, v in spec.to_dict().items() if k not in ("in_chans", "bit_depth")}
    old.update(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    assert (ModelSpec.from_dict(old).in_chans, ModelSpec.from_dict(old).bit_depth) == (3, 8)
    with pytest.raises(ValueError, match="one value per input channel"):
        ModelSpec("simple_cnn", ("a",), (16, 16), [0.5, 0.5, 0.5], [0.2, 0.2, 0.2], in_chans=1)


def test_config_grey_defaults_and_refusals(capsys):
    cfg = config.parse_config(["--train", "--in_chans", "1", "--bit_depth", "16"])
    assert cfg.mean == [pytest.approx((0.485 + 0.456 + 0.406) / 3)] and cfg.std == [pytest.approx(0.226)]
    assert config.parse_config(["--train", "--in_chans", "1", "--mean", "0.3", "--std", "0.1"]).mean == [0.3]
    for argv, message in (
            (["--in_chans", "1", "--mean", "0.5", "0.5", "0.5"], "--mean needs 1 value"),
            (["--std", "0.2"], "--std needs 3 value"),
            (["--bit_depth", "16", "--aug"], "--aug: the per-image policies work on 8-bit values"),
            (["--bit_depth", "16", "--interpolation", "bicubic"], "use --interpolation bilinear")):
        with pytest.raises(SystemExit):
            config.parse_config(["--train", *argv])
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


# ------------------------------------------------------------------------------------------------ demo
@pytest.mark.parametrize("fmt", [GREY8, GREY16, RGB16, PixelFormat(3, 8)])
@pytest.mark.parametrize("resize", ["letterbox", "center_crop"])
def test_demo_preprocessing_is_bit_exact_for_grey_and_16_bits(tmp_path, fmt, resize):
    demo = demo_module()
    digits = write_digit_folders(tmp_path / "digits", counts={"train": 1}, size=20)
    photo = Image.open(next((digits / "train" / "7").iterdir())).convert("RGB").resize((23, 17))
    ramp = np.linspace(0, 65535, 23 * 17).reshape(17, 23).astype(np.uint16)
    images = {"rgb.png": encoded(photo), "grey.png": encoded(photo.convert("L")), "16bit.png": encoded(
        Image.fromarray(ramp)), "16bit.tif": encoded(Image.fromarray(ramp), "TIFF"),
        "palette.png": encoded(photo.convert("P")), "photo.jpg": encoded(photo, "JPEG"),
        **{f"16bit-{kind}": make() for kind, make in WIDE_COLOUR.items()}}
    meta = {"image_size": [16, 16], "resize": resize, "crop_pct": 0.875, "in_chans": fmt.channels,
            "bit_depth": fmt.bit_depth, "mean": [0.5] * fmt.channels, "std": [0.2] * fmt.channels}
    ours, project = demo.Preprocessor(meta), create_transform(False, (16, 16), eval_resize=resize)
    batch_ours, batch_project = [], []
    for name, data in images.items():
        expected, got = project(decode_pixels(data, fmt=fmt)), ours.load(data)
        assert got.dtype == expected.dtype == fmt.dtype and got.shape == expected.shape == (fmt.channels, 16, 16)
        assert torch.equal(got, expected), f"{name}: {int((got.int() - expected.int()).abs().max())} levels off"
        batch_ours.append(got)
        batch_project.append(expected)
    normalised = BatchPreprocessor(meta["mean"], meta["std"], torch.device("cpu"))(torch.stack(batch_project))
    assert torch.equal(ours.normalise(torch.stack(batch_ours)), normalised)


def test_pictures_show_grey_tripled_and_16_bits_rounded_to_8():
    image = torch.tensor([[[0, 128, 257 * 200 + 100, 65535]]], dtype=torch.int32).to(torch.uint16)
    shown = to_hwc(image)
    assert shown.dtype == np.uint8 and shown.shape == (1, 4, 3)
    assert shown[0, :, 0].tolist() == [0, 0, 200, 255] and (shown[..., 0] == shown[..., 2]).all()
