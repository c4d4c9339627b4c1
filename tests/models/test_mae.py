import math
from pathlib import Path
from typing import Any

import pytest
import torch

from explora_geo.models.mae import (
    MAE_MODELS,
    MaskedAutoencoder,
    MaskedAutoencoderViT,
    RandomMask,
    create_mae,
    masked_reconstruction_loss,
    num_kept_tokens,
    random_masking,
    register_mae,
)
from explora_geo.models.pos_embed import sincos_pos_embed_2d
from tests.data.checkpoints import layouts

# A 2-block, 32-wide MAE ViT/8 on 32 px images with a 16-wide, 2-block decoder.
TINY: dict[str, Any] = {
    'img_size': 32,
    'patch_size': 8,
    'embed_dim': 32,
    'depth': 2,
    'num_heads': 2,
    'decoder_embed_dim': 16,
    'decoder_depth': 2,
    'decoder_num_heads': 2,
}
GRID = 4


def tiny_mae(**kwargs: Any) -> MaskedAutoencoderViT:
    model = create_mae('explora_vitb_mae', **{**TINY, **kwargs})
    assert isinstance(model, MaskedAutoencoderViT)
    return model


def official_checkpoint(**kwargs: Any) -> dict[str, dict[str, torch.Tensor]]:
    """``mae_visualize_vit_*.pth`` layout at the tiny size."""
    args = {'d': 32, 'depth': 2, 'grid': GRID, 'patch': 8, 'dec_d': 16, 'dec_depth': 2}
    return layouts.mae(**{**args, **kwargs})


def mae_patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """``models_mae.MaskedAutoencoderViT.patchify``, written out."""
    n, c, h, w = imgs.shape
    x = imgs.reshape(n, c, h // p, p, w // p, p)
    x = torch.einsum('nchpwq->nhwpqc', x)
    return x.reshape(n, (h // p) * (w // p), p * p * c)


def mae_loss(
    imgs: torch.Tensor,
    pred: torch.Tensor,
    mask: torch.Tensor,
    p: int,
    norm_pix: bool,
) -> torch.Tensor:
    """``models_mae.MaskedAutoencoderViT.forward_loss``, written out."""
    target = mae_patchify(imgs, p)
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    loss = ((pred - target) ** 2).mean(dim=-1)
    return (loss * mask).sum() / mask.sum()


def mae_decoder(
    model: MaskedAutoencoderViT, x: torch.Tensor, ids_restore: torch.Tensor
) -> torch.Tensor:
    """``models_mae.MaskedAutoencoderViT.forward_decoder``, written out."""
    x = model.decoder_embed(x)
    mask_tokens = model.mask_token.repeat(
        x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1
    )
    x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
    x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
    x = torch.cat([x[:, :1, :], x_], dim=1) + model.decoder_pos_embed
    for blk in model.decoder_blocks:
        x = blk(x)
    return model.decoder_pred(model.decoder_norm(x))[:, 1:, :]


def masking_from_noise(noise: torch.Tensor, keep: int) -> RandomMask:
    """``models_mae.MaskedAutoencoderViT.random_masking``, written out."""
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones_like(noise)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return RandomMask(ids_shuffle[:, :keep], ids_restore, mask)


class TestLoading:
    def test_official_layout_round_trip(self, tmp_path: Path) -> None:
        checkpoint = official_checkpoint()
        path = tmp_path / 'mae_visualize_vit_tiny.pth'
        torch.save(checkpoint, path)
        model = create_mae('explora_vitb_mae', weights=path, **TINY)
        state = model.state_dict()
        for key, value in checkpoint['model'].items():
            name = (
                key
                if key.startswith('decoder_') or key == 'mask_token'
                else f'encoder.{key}'
            )
            torch.testing.assert_close(state[name], value, rtol=0, atol=0, msg=key)
        assert len(state) == len(checkpoint['model'])

    def test_missing_and_unexpected_keys_are_listed(self, tmp_path: Path) -> None:
        checkpoint = official_checkpoint()
        del checkpoint['model']['decoder_norm.weight']
        del checkpoint['model']['blocks.1.attn.qkv.bias']
        checkpoint['model']['decoder_extra.weight'] = torch.zeros(3)
        path = tmp_path / 'broken.pth'
        torch.save(checkpoint, path)
        with pytest.raises(KeyError) as info:
            create_mae('explora_vitb_mae', weights=path, **TINY)
        message = str(info.value)
        assert str(path) in message
        assert (
            "missing keys: ['blocks.1.attn.qkv.bias', 'decoder_norm.weight']" in message
        )
        assert "unexpected keys: ['decoder_extra.weight']" in message

    def test_encoder_only_checkpoint_names_the_decoder(self) -> None:
        model = tiny_mae()
        with pytest.raises(KeyError, match=r'decoder_embed\.weight.*with the decoder'):
            model.load_source_checkpoint(official_checkpoint(decoder=False))

    def test_wrong_shape(self) -> None:
        checkpoint = official_checkpoint()
        checkpoint['model']['decoder_pred.weight'] = torch.zeros(100, 16)
        with pytest.raises(
            ValueError, match=r'decoder_pred\.weight has shape \(100, 16\)'
        ):
            tiny_mae().load_source_checkpoint(checkpoint)

    def test_other_grid_resamples_position_tables(self) -> None:
        checkpoint = official_checkpoint()
        model = tiny_mae(img_size=48)  # 6 x 6 patches instead of 4 x 4
        model.load_source_checkpoint(checkpoint)
        # MAE's interpolate_pos_embed: bicubic to the new size, no antialias.
        for name, key in (
            ('decoder_pos_embed', 'decoder_pos_embed'),
            ('encoder.pos_embed', 'pos_embed'),
        ):
            table = checkpoint['model'][key]
            grid = table[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
            grid = torch.nn.functional.interpolate(
                grid, size=(6, 6), mode='bicubic', align_corners=False
            )
            expected = torch.cat(
                [table[:, :1], grid.permute(0, 2, 3, 1).flatten(1, 2)], dim=1
            )
            torch.testing.assert_close(model.state_dict()[name], expected)
        assert model.encoder.pos_embed.shape == (1, 37, 32)

    def test_default_weights_are_the_pixel_decoder_release(self) -> None:
        assert MAE_MODELS['explora_vitl_mae'] is not None
        with torch.device('meta'):
            model = create_mae('explora_vitl_mae')
        assert model.default_weights is not None
        assert model.default_weights.url.endswith('mae_visualize_vit_large.pth')
        # The decoder of the released ViT-L MAE: 512 wide, 8 blocks.
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert shapes['decoder_pos_embed'] == (1, 197, 512)
        assert shapes['mask_token'] == (1, 1, 512)
        assert shapes['decoder_blocks.7.attn.qkv.weight'] == (1536, 512)
        assert shapes['decoder_pred.weight'] == (768, 512)
        assert 'decoder_blocks.8.norm1.weight' not in shapes


class TestMasking:
    @pytest.mark.parametrize(
        ('tokens', 'ratio', 'kept'),
        [(196, 0.75, 49), (16, 0.75, 4), (144, 0.75, 36), (10, 0.9, 1), (16, 0.0, 16)],
    )
    def test_kept_count(self, tokens: int, ratio: float, kept: int) -> None:
        assert num_kept_tokens(tokens, ratio) == kept == round(tokens * (1 - ratio))
        masking = random_masking(3, tokens, ratio)
        assert masking.ids_keep.shape == (3, kept)
        assert masking.mask.sum(dim=1).tolist() == [tokens - kept] * 3

    def test_bad_ratio(self) -> None:
        with pytest.raises(
            ValueError, match=r'mask_ratio must be in \[0, 1\), got 1.0'
        ):
            num_kept_tokens(16, 1.0)

    def test_per_sample_and_consistent(self) -> None:
        g = torch.Generator().manual_seed(0)
        masking = random_masking(4, 16, 0.75, generator=g)
        # Kept positions are exactly the zeros of the mask.
        for row in range(4):
            kept = set(masking.ids_keep[row].tolist())
            assert kept == set(torch.nonzero(masking.mask[row] == 0).flatten().tolist())
        # Every sample gets its own mask.
        assert len({tuple(r) for r in masking.ids_keep.sort(dim=1).values.tolist()}) > 1
        g = torch.Generator().manual_seed(0)
        noise = torch.rand(4, 16, generator=g)
        reference = masking_from_noise(noise, 4)
        assert torch.equal(masking.ids_restore, reference.ids_restore)
        assert torch.equal(masking.mask, reference.mask)


class TestForward:
    @pytest.mark.parametrize('norm_pix', [True, False])
    def test_loss_matches_reference(self, norm_pix: bool) -> None:
        torch.manual_seed(0)
        model = tiny_mae(norm_pix_loss=norm_pix).eval()
        x = torch.rand(2, 3, 32, 32)
        torch.manual_seed(1)
        out = model(x, mask_ratio=0.75)
        torch.manual_seed(1)
        noise = torch.rand(2, GRID * GRID)
        masking = masking_from_noise(noise, 4)
        latent = model.forward_encoder(x, masking)
        pred = mae_decoder(model, latent, masking.ids_restore)
        expected = mae_loss(x, pred, masking.mask, 8, norm_pix)
        torch.testing.assert_close(out.loss, expected)
        torch.testing.assert_close(out.pred, pred)
        assert torch.equal(out.mask, masking.mask)
        assert out.pred.shape == (2, 16, 8 * 8 * 3)

    def test_norm_pix_changes_the_loss(self) -> None:
        pred = torch.randn(2, 16, 12)
        target = torch.randn(2, 16, 12) * 5 + 3
        mask = (torch.rand(2, 16) > 0.5).float()
        plain = masked_reconstruction_loss(pred, target, mask, norm_pix_loss=False)
        normed = masked_reconstruction_loss(pred, target, mask, norm_pix_loss=True)
        assert not torch.isclose(plain, normed)
        by_hand = ((pred - target) ** 2).mean(-1)
        torch.testing.assert_close(plain, (by_hand * mask).sum() / mask.sum())

    def test_encoder_without_masking_is_the_vit(self) -> None:
        torch.manual_seed(0)
        model = tiny_mae().eval()
        x = torch.rand(2, 3, 32, 32)
        identity = masking_from_noise(torch.arange(16.0).expand(2, 16), 16)
        torch.testing.assert_close(
            model.forward_encoder(x, identity), model.encoder.forward_features(x)
        )

    def test_bf16_autocast(self) -> None:
        model = tiny_mae()
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = model(torch.rand(2, 3, 32, 32))
        assert out.loss.dtype == torch.float32
        assert torch.isfinite(out.loss)
        out.loss.backward()

    def test_wrong_channels(self) -> None:
        with pytest.raises(
            ValueError, match=r'expected images of shape \(B, 3, H, W\)'
        ):
            tiny_mae()(torch.rand(2, 4, 32, 32))


def test_sincos_table_matches_mae_formula() -> None:
    dim, grid = 8, 3
    table = sincos_pos_embed_2d(dim, grid)
    assert table.shape == (1, 1 + grid * grid, dim)
    assert torch.equal(table[0, 0], torch.zeros(dim))
    quarter = dim // 4
    omega = [1 / 10000 ** (k / quarter) for k in range(quarter)]
    for row in range(grid):
        for col in range(grid):
            # MAE's meshgrid puts w first: the first half encodes the column.
            expected = [math.sin(col * w) for w in omega] + [
                math.cos(col * w) for w in omega
            ]
            expected += [math.sin(row * w) for w in omega] + [
                math.cos(row * w) for w in omega
            ]
            torch.testing.assert_close(
                table[0, 1 + row * grid + col],
                torch.tensor(expected),
                atol=1e-6,
                rtol=0,
            )
    assert not tiny_mae().decoder_pos_embed.requires_grad


def test_decoder_keys_and_patterns() -> None:
    model = tiny_mae()
    keys = set(model.state_dict())
    assert {
        'decoder_blocks.1.attn.qkv.weight',
        'decoder_blocks.1.attn.qkv.bias',
        'decoder_blocks.1.norm2.weight',
    } <= keys
    assert model.decoder_trainable_patterns() == (
        'decoder_norm.*',
        'decoder_blocks.*.norm*',
    )


class TestRegistry:
    def test_unknown_name(self) -> None:
        with pytest.raises(
            ValueError,
            match=r"no masked autoencoder registered as 'nope'.*explora_vitl_mae",
        ):
            create_mae('nope')

    def test_duplicate_name(self) -> None:
        def other(**kwargs: Any) -> MaskedAutoencoder:
            raise AssertionError

        with pytest.raises(
            ValueError, match="already registered as 'explora_vitb_mae'"
        ):
            register_mae('explora_vitb_mae')(other)

    def test_not_a_vit(self) -> None:
        with pytest.raises(
            TypeError, match='needs a timm VisionTransformer, got Linear'
        ):
            MaskedAutoencoderViT(torch.nn.Linear(2, 2))
