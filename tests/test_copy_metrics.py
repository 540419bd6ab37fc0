"""DiffAD's copy PSNR in its two readings (dap.copy_metrics), closed forms in float64."""

import math

import pytest
import torch

from dap.copy_metrics import (PAPER_COPY_PSNR, copy_measures, copy_psnr, copy_psnr_on,
                              mask_gain_db)


def test_copy_psnr_closed_form_and_only_mask_pixels():
    img = torch.zeros(1, 3, 4, 4, dtype=torch.float64)
    mask = torch.zeros(1, 4, 4)
    mask[0, :2, :2] = 1
    rec = img.clone()
    rec[..., :2, :2] = 0.1               # MSE inside = 0.01
    rec[..., 2:, 2:] = 0.9               # outside the mask: must not count
    # PSNR = 10 log10(2^2 / 0.01)
    expected = 10 * math.log10(4 / 0.01)
    assert float(copy_psnr(rec, img, mask)) == pytest.approx(expected, abs=1e-9)
    assert float(copy_psnr(rec, img, mask[:, None])) == pytest.approx(expected, abs=1e-9)
    assert float(copy_psnr(rec, img, mask, data_range=1.0)) == pytest.approx(
        10 * math.log10(1 / 0.01), abs=1e-9)
    # outside: 4 pixels at 0.81, 8 pixels at 0 -> MSE 0.27
    assert float(copy_psnr(rec, img, 1 - mask)) == pytest.approx(
        10 * math.log10(4 / (4 * 0.81 / 12)), abs=1e-9)
    # the masked images agree outside the mask: whole-image MSE = 0.01 * 4 / 16
    assert float(copy_psnr(rec, img, mask, region="masked_image")) == pytest.approx(
        10 * math.log10(4 / (0.01 * 4 / 16)), abs=1e-9)


def test_masked_image_psnr_is_region_psnr_plus_ten_log_inverse_mask_fraction():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(5, 3, 16, 16, generator=g, dtype=torch.float64) * 2 - 1
    rec = torch.rand(5, 3, 16, 16, generator=g, dtype=torch.float64) * 2 - 1
    mask = (torch.rand(5, 16, 16, generator=g) < torch.tensor([0.03, 0.1, 0.3, 0.7, 1.0])
            [:, None, None]).float()
    mask[:, 0, 0] = 1                                        # never empty
    region = copy_psnr(rec, img, mask, reduction="none")
    whole = copy_psnr(rec, img, mask, reduction="none", region="masked_image")
    frac = mask.flatten(1).mean(1).double()
    # PSNR_masked_image = PSNR_region + 10 log10(1 / f), f = |m| / (H W)
    torch.testing.assert_close(whole, region + 10 * torch.log10(1 / frac), atol=1e-10, rtol=0)
    torch.testing.assert_close(mask_gain_db(mask), 10 * torch.log10(1 / frac), atol=1e-12,
                               rtol=0)
    # the definition itself, independently: PSNR of x_r * m vs x * m over every value
    m = mask[:, None].double()
    mse = ((rec * m - img * m) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(whole, 10 * torch.log10(4 / mse), atol=1e-10, rtol=0)
    assert float(whole[-1]) == pytest.approx(float(region[-1]))       # f = 1: the same
    # a 3 % mask: +15.2 dB
    three = torch.zeros(1, 100, 100)
    three[0, :3] = 1
    assert float(mask_gain_db(three)) == pytest.approx(10 * math.log10(100 / 3))
    assert 15.2 < float(mask_gain_db(three)) < 15.3


def test_copy_psnr_reductions():
    img = torch.zeros(2, 3, 2, 2, dtype=torch.float64)
    rec = torch.zeros(2, 3, 2, 2, dtype=torch.float64)
    rec[0] = 0.1      # MSE 0.01 over 1 mask pixel
    rec[1] = 0.2      # MSE 0.04 over 3 mask pixels
    mask = torch.tensor([[[1, 0], [0, 0]], [[1, 1], [1, 0]]], dtype=torch.float32)
    per = copy_psnr(rec, img, mask, reduction="none")
    torch.testing.assert_close(per, torch.tensor([10 * math.log10(400), 10 * math.log10(100)],
                                                 dtype=torch.float64))
    assert float(copy_psnr(rec, img, mask)) == pytest.approx(float(per.mean()))
    pooled = (1 * 0.01 + 3 * 0.04) / 4
    assert float(copy_psnr(rec, img, mask, reduction="pooled")) == pytest.approx(
        10 * math.log10(4 / pooled))
    pooled_whole = (1 * 0.01 + 3 * 0.04) / 8
    assert float(copy_psnr(rec, img, mask, reduction="pooled", region="masked_image")) == \
        pytest.approx(10 * math.log10(4 / pooled_whole))


def test_copy_psnr_errors():
    img = torch.zeros(2, 3, 4, 4)
    mask = torch.zeros(2, 4, 4)
    mask[0, 1, 1] = 1
    for region in ("region", "masked_image"):
        with pytest.raises(ValueError, match=r"image\(s\) \[1\] is empty"):
            copy_psnr(img + 0.1, img, mask, region=region)
    with pytest.raises(ValueError, match="must both be"):
        copy_psnr(img[:, :, :2], img, mask)
    with pytest.raises(ValueError, match="region must be"):
        copy_psnr(img + 0.1, img, mask + 1, region="whole")


def test_copy_measures_names_both_readings():
    g = torch.Generator().manual_seed(1)
    img = torch.rand(3, 3, 8, 8, generator=g) * 2 - 1
    rec, clean = img + 0.1, img - 0.05
    mask = torch.zeros(3, 8, 8)
    mask[:, 2:4, 2:5] = 1
    out = copy_measures(rec, img, mask, clean)
    assert set(out) == {"copy_psnr_region", "copy_psnr_masked_image", "mask_gain_db",
                        "context_psnr", "repair_psnr"}
    assert out["copy_psnr_masked_image"] == pytest.approx(out["copy_psnr_region"]
                                                          + out["mask_gain_db"])
    assert out["mask_gain_db"] == pytest.approx(10 * math.log10(64 / 6))
    assert "copy_psnr" not in out                  # no name that could pass for the paper's
    assert set(PAPER_COPY_PSNR) == {"DiffAD", "DRAEM"}


def test_copy_psnr_on_a_dataset():
    class Identityish(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def predict(self, x):
            from dap.methods.base import Prediction
            return Prediction(torch.zeros(x.shape[0], *x.shape[2:]), torch.zeros(x.shape[0]),
                              x + 0.1)

    items = []
    for i in range(4):
        m = torch.zeros(1, 8, 8)
        if i % 2:
            m[:, :2, :4] = 1
        items.append({"image": torch.zeros(3, 8, 8), "mask": m})
    out = copy_psnr_on(Identityish(), items, batch_size=3)
    assert out["images"] == 2
    assert out["copy_psnr_region"] == pytest.approx(10 * math.log10(4 / 0.01))
    assert out["copy_psnr_masked_image"] == pytest.approx(10 * math.log10(4 / (0.01 * 8 / 64)))
    assert out["mask_gain_db"] == pytest.approx(10 * math.log10(8))


def test_copy_table_never_puts_the_paper_in_a_column_of_dap():
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    try:
        import copy_table
    finally:
        sys.path.pop(0)
    row = {"method": "diffad", "categories": "brick", "copy_psnr_region": 17.5,
           "copy_psnr_masked_image": 31.25, "mask_gain_db": 13.75, "context_psnr": 23.0,
           "repair_psnr": 20.0}
    md = copy_table.table_markdown([row])
    table, note = md.split("\n\n")
    assert "| diffad | 17.50 | 31.25 | 13.75 | 23.00 | 20.00 | brick |" in table
    assert "36.73" not in table and "paper" not in table
    assert "36.73" in note and "38.49" in note and "masked-image column" in note
