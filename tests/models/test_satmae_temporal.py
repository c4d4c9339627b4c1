import math
from typing import Any

import pytest
import timm
import torch
from torch import Tensor, nn

from explora_geo.adapter import ExPLoRAConfig
from explora_geo.models import (
    TemporalMAE,
    TemporalViT,
    load_checkpoint,
    time_encoding,
)
from explora_geo.models.mae import create_mae
from explora_geo.tasks.explora_mae import ExPLoRAMAE
from tests.data.checkpoints import layouts

# A 2-block, 64-wide ViT/8 on 32 px images: 40 position + 3 x 8 time dims
# (SatMAE's ViT-L: 640 + 3 x 128); decoder 32 wide (20 + 3 x 4).
D, TIME, DEC_D, DEC_TIME = 64, 8, 32, 4
TINY: dict[str, Any] = {
    'img_size': 32,
    'patch_size': 8,
    'embed_dim': D,
    'depth': 2,
    'num_heads': 2,
    'time_embed_dim': TIME,
}
TINY_DECODER: dict[str, Any] = {
    'decoder_embed_dim': DEC_D,
    'decoder_depth': 1,
    'decoder_num_heads': 2,
    'decoder_time_embed_dim': DEC_TIME,
}
STAMPS = torch.tensor([[[2016, 7, 14], [2017, 1, 0], [2015, 12, 23]]])


def tiny_vit(**kwargs: Any) -> TemporalViT:
    torch.manual_seed(0)
    model = timm.create_model('explora_vitl_satmae_temporal', **{**TINY, **kwargs})
    assert isinstance(model, TemporalViT)
    return model.eval()


def tiny_mae(**kwargs: Any) -> TemporalMAE:
    torch.manual_seed(0)
    model = create_mae(
        'explora_vitl_satmae_temporal', **{**TINY, **TINY_DECODER, **kwargs}
    )
    assert isinstance(model, TemporalMAE)
    return model


def closed_form_1d(dim: int, pos: float) -> list[float]:
    freqs = [1 / 10000 ** (2 * k / dim) for k in range(dim // 2)]
    return [math.sin(pos * f) for f in freqs] + [math.cos(pos * f) for f in freqs]


def test_registered_sizes_on_meta() -> None:
    assert 'explora_vitl_satmae_temporal' in timm.list_models('explora_*')
    with torch.device('meta'):
        classifier = timm.create_model('explora_vitl_satmae_temporal', num_classes=62)
        mae = create_mae('explora_vitl_satmae_temporal')
        assert isinstance(classifier, TemporalViT)
        tokens = classifier.forward_features(
            torch.empty(2, 3, 3, 224, 224),
            timestamps=STAMPS.expand(2, 3, 3).to('meta'),
        )
    # SatMAE's temporal ViT-L classifier and MAE hold 303.29M and 329.43M values.
    assert sum(p.numel() for p in classifier.parameters()) == 303_289_534
    values = sum(p.numel() for p in mae.parameters())
    values += sum(b.numel() for b in mae.buffers())
    assert round(values / 1e6, 2) == 329.43
    assert classifier.pos_embed.shape == (1, 197, 640)
    assert mae.decoder_pos_embed.shape == (1, 197, 320)
    assert tokens.shape == (2, 1 + 3 * 196, 1024)


def test_time_encoding_closed_form() -> None:
    encoding = time_encoding(STAMPS, 16)
    assert encoding.shape == (1, 3, 48)
    for t, (year, month, hour) in enumerate(STAMPS[0].tolist()):
        want = (
            closed_form_1d(16, year - 2002)
            + closed_form_1d(16, month - 1)
            + closed_form_1d(16, hour)
        )
        torch.testing.assert_close(
            encoding[0, t], torch.tensor(want), atol=1e-5, rtol=0
        )


def satmae_forward_features(model: TemporalViT, x: Tensor, ts: Tensor) -> Tensor:
    """SatMAE's temporal ``forward_features`` (before pooling), written out with
    the calendar offsets its dataset applies."""
    b = x.shape[0]
    x = torch.cat([model.patch_embed(x[:, i]) for i in range(3)], dim=1)
    ts = (ts - torch.tensor([2002, 1, 0])).reshape(-1, 3).float()
    rows = [
        torch.tensor([closed_form_1d(TIME, float(v)) for v in ts[:, i]])
        for i in range(3)
    ]
    ts_embed = torch.cat(rows, dim=1).float().reshape(-1, 3, 3 * TIME).unsqueeze(2)
    ts_embed = ts_embed.expand(-1, -1, x.shape[1] // 3, -1).reshape(b, -1, 3 * TIME)
    ts_embed = torch.cat([torch.zeros(b, 1, 3 * TIME), ts_embed], dim=1)
    assert model.cls_token is not None
    x = torch.cat([model.cls_token.expand(b, -1, -1), x], dim=1)
    pos = torch.cat(
        [model.pos_embed[:, :1], model.pos_embed[:, 1:].repeat(1, 3, 1)], dim=1
    )
    x = x + torch.cat([pos.expand(b, -1, -1), ts_embed], dim=-1)
    for blk in model.blocks:
        x = blk(x)
    return model.norm(x)


def test_matches_satmae_temporal_classifier() -> None:
    model = tiny_vit(num_classes=5, global_pool='token')
    x = torch.randn(2, 3, 3, 32, 32)
    ts = torch.cat([STAMPS, STAMPS.flip(1)])
    with torch.no_grad():
        model.pos_embed.normal_()  # a trained, learnable table
        expected = satmae_forward_features(model, x, ts)
        torch.testing.assert_close(
            model.forward_features(x, timestamps=ts), expected, atol=1e-4, rtol=1e-4
        )
        torch.testing.assert_close(
            model(x, timestamps=ts), model.head(expected[:, 0]), atol=1e-4, rtol=1e-4
        )


def test_dates_change_the_output() -> None:
    model = tiny_vit()
    x = torch.randn(1, 3, 3, 32, 32)
    perm = [2, 0, 1]

    def frames(images: Tensor, stamps: Tensor) -> Tensor:
        """Output tokens grouped by image: (B, T, L, D)."""
        return model.forward_features(images, timestamps=stamps)[:, 1:].unflatten(
            1, (3, 16)
        )

    with torch.no_grad():
        out = frames(x, STAMPS)
        # Reordering the images with their dates reorders the same tokens.
        torch.testing.assert_close(
            frames(x[:, perm], STAMPS[:, perm]), out[:, perm], atol=1e-5, rtol=1e-5
        )
        # Reordering the images but not their dates changes them ...
        assert (frames(x[:, perm], STAMPS) - out[:, perm]).abs().max() > 0.1
        # ... and so does another month for one image.
        later = STAMPS.clone()
        later[0, 1, 1] = 6
        assert (frames(x, later)[:, 1] - out[:, 1]).abs().max() > 0.1


def test_timestamp_errors() -> None:
    model = tiny_vit()
    x = torch.randn(1, 3, 3, 32, 32)
    with pytest.raises(ValueError, match=r'year values span \[13, 15\].*calendar'):
        model(x, timestamps=STAMPS - torch.tensor([2002, 1, 0]))
    with pytest.raises(ValueError, match=r'month values span \[0, 11\]'):
        model(x, timestamps=STAMPS - torch.tensor([0, 1, 0]))
    with pytest.raises(
        ValueError, match=r'shape \(B, T, 3\) = \(1, 3, 3\).*\(1, 2, 3\)'
    ):
        model(x, timestamps=STAMPS[:, :2])
    with pytest.raises(ValueError, match=r'\(B, T, C, H, W\), got \(1, 3, 32, 32\)'):
        model(x[:, 0], timestamps=STAMPS)


def test_any_number_of_images_and_intermediates() -> None:
    model = tiny_vit()
    x = torch.randn(2, 2, 3, 32, 32)
    ts = STAMPS[:, :2].expand(2, 2, 3)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x, indices=[0, 1], timestamps=ts)
        tokens = model.forward_intermediates(
            x, indices=[1], output_fmt='NLC', intermediates_only=True, timestamps=ts
        )[0]
    assert final.shape == (2, 1 + 2 * 16, D)
    assert [m.shape for m in maps] == [(2, 2 * D, 4, 4)] * 2
    # Channels t*D:(t+1)*D at (row, col) hold image t's token of that location.
    torch.testing.assert_close(maps[1][:, D:, 2, 1], tokens[:, 16 + 2 * 4 + 1])


def test_mae_loss_and_shapes() -> None:
    model = tiny_mae(norm_pix_loss=False)
    x = torch.randn(2, 3, 3, 32, 32)
    ts = STAMPS.expand(2, 3, 3)
    out = model(x, mask_ratio=0.75, timestamps=ts)
    assert out.pred.shape == (2, 3, 16, 8 * 8 * 3)
    assert out.mask.shape == (2, 3, 16)
    assert out.mask.sum(dim=(1, 2)).tolist() == [36.0, 36.0]
    # MAE's patchify (pixel-major, channel last) of every image; loss on removed patches.
    target = x.reshape(2, 3, 3, 4, 8, 4, 8).permute(0, 1, 3, 5, 4, 6, 2)
    target = target.reshape(2, 3, 16, 192)
    err = (out.pred - target).pow(2).mean(dim=-1)
    torch.testing.assert_close(out.loss, (err * out.mask).sum() / out.mask.sum())


def test_mae_same_mask_and_missing_timestamps() -> None:
    model = tiny_mae(same_mask=True)
    torch.manual_seed(0)
    out = model(torch.randn(2, 3, 3, 32, 32), timestamps=STAMPS.expand(2, 3, 3))
    assert torch.equal(out.mask[:, 0], out.mask[:, 1])
    assert torch.equal(out.mask[:, 0], out.mask[:, 2])
    with pytest.raises(ValueError, match='needs timestamps'):
        model(torch.randn(2, 3, 3, 32, 32))


def satmae_temporal_mae_layout(
    d: int = D, dec_d: int = DEC_D
) -> dict[str, dict[str, Tensor]]:
    """SatMAE's temporal MAE checkpoint at the tiny size: RGB MAE keys, narrower tables."""
    sd = layouts.mae(d=d, depth=2, grid=4, patch=8, dec_d=dec_d, dec_depth=1)['model']
    sd['pos_embed'] = torch.randn(1, 17, d - 3 * TIME)
    sd['decoder_pos_embed'] = torch.randn(1, 17, dec_d - 3 * DEC_TIME)
    return {'model': sd}


def test_loads_satmae_temporal_checkpoints() -> None:
    ckpt = satmae_temporal_mae_layout()
    model = tiny_mae()
    model.load_source_checkpoint(ckpt)
    state = model.state_dict()
    for key, value in ckpt['model'].items():
        name = key if key.startswith(('decoder_', 'mask_token')) else f'encoder.{key}'
        assert torch.equal(state[name], value), key
    # The fine-tuned classifier layout (class-token pooling, 62 classes).
    classifier_sd = {
        k: v
        for k, v in ckpt['model'].items()
        if not k.startswith('decoder_') and k != 'mask_token'
    }
    classifier_sd['head.weight'] = torch.randn(62, D)
    classifier_sd['head.bias'] = torch.randn(62)
    classifier = load_checkpoint(
        tiny_vit(num_classes=62, global_pool='token'), {'model': classifier_sd}
    )
    assert torch.equal(
        classifier.get_parameter('head.weight'), classifier_sd['head.weight']
    )
    assert torch.equal(
        classifier.get_parameter('pos_embed'), classifier_sd['pos_embed']
    )


def test_mae_from_rgb_mae_source() -> None:
    """ExPLoRA's temporal MAE starts from the RGB MAE: the shared patch embedding,
    blocks and pixel head fit; the full-width position tables do not."""
    rgb = layouts.mae(d=D, depth=2, grid=4, patch=8, dec_d=DEC_D, dec_depth=1)['model']
    model = tiny_mae()
    own_pos = model.encoder.pos_embed.clone()
    model.load_source_checkpoint({'model': rgb})
    assert torch.equal(
        model.encoder.patch_embed.proj.weight, rgb['patch_embed.proj.weight']
    )
    assert torch.equal(
        model.get_parameter('decoder_pred.weight'), rgb['decoder_pred.weight']
    )
    assert torch.equal(model.encoder.pos_embed, own_pos)
    with pytest.raises(KeyError, match=r'missing keys: \[.*blocks\.1\.'):
        del rgb['blocks.1.mlp.fc2.bias']
        tiny_mae().load_source_checkpoint({'model': rgb})


@pytest.mark.filterwarnings('ignore:You are trying to `self.log')
def test_explora_mae_task_passes_timestamps() -> None:
    task = ExPLoRAMAE(
        model='explora_vitl_satmae_temporal',
        in_channels=3,
        img_size=32,
        adapter=ExPLoRAConfig(unfrozen_blocks=(0, -1), rank=4),
        decoder_lora_rank=4,
        model_kwargs={k: v for k, v in TINY.items() if k != 'img_size'},
        decoder_kwargs=TINY_DECODER,
        transform=nn.Identity(),
    )
    batch = {'image': torch.rand(2, 3, 3, 32, 32), 'timestamps': STAMPS.expand(2, 3, 3)}
    loss = task.training_step(batch, 0)
    assert torch.isfinite(loss)
    loss.backward()
    assert task.model.encoder.blocks[-1].mlp.fc1.weight.grad is not None
