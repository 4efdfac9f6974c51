"""Batched inference for `kokoro.KModel`: B utterances of different lengths in one forward pass.

hexgrad's `KModel.forward` synthesises one utterance: it has no padding mask, squeezes the
durations and builds a single alignment. `forward_batch` runs the same modules, with the same
weights, on a padded batch, and makes padding invisible to every item:

- the text side pads token ids and passes lengths/masks (ALBERT attention mask, packed LSTMs);
- durations are per item, each with its own speed; the frame alignment is a per-item gather;
- every AdaIN instance norm takes its statistics over the item's valid frames only, and every
  tensor entering a convolution is zero beyond the item's valid length, exactly as the zero
  padding an item sees when it runs alone. Valid lengths are tracked through each resolution
  (x1, x2 in the predictor and decoder, then the generator's upsampling stages);
- the harmonic source and the STFT/iSTFT at the edges run per item on its exact length (they
  are cheap), so the boundary handling (reflection, overlap-add) is the solo one.

Kokoro's vocoder draws random numbers (initial harmonic phases and noise). Each item draws
from its own generator seeded with `seed`, in the same order KModel does, so an item's output
is deterministic and equals `KModel.forward_with_tokens` run alone after `torch.manual_seed(seed)`
(same durations; waveform equal up to float rounding). The modules are called directly; nothing
in kokoro is patched, so plain `KModel.forward` keeps working on the same model.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_SQRT_HALF = 1.0 / math.sqrt(2.0)


@dataclass(frozen=True)
class Synthesis:
    """One item's result."""

    #: float32 [samples] at 24 kHz, on the CPU.
    audio: Tensor
    #: long [tokens + 2]: frames per input token, the two boundary tokens included.
    durations: Tensor


Mask = Tensor | None  # [B, 1, T] float, 1 on valid frames; None when every item fills T


def _mask(lengths: Tensor, size: int) -> Mask:
    """The validity mask for tensors `size` wide, or None when no item is padded there (then
    every padding-aware step below is exactly the plain module call, at the same speed)."""
    if bool((lengths >= size).all()):
        return None
    return (torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]).float()[:, None, :]


def _masked(x: Tensor, mask: Mask) -> Tensor:
    return x if mask is None else x * mask.to(x.dtype)


def _adain(norm: nn.Module, x: Tensor, s: Tensor, mask: Mask) -> Tensor:
    """AdaIN1d with instance-norm statistics over each item's valid frames; zero beyond them."""
    if mask is None:
        return norm(x, s)
    gamma, beta = norm.fc(s)[:, :, None].float().chunk(2, dim=1)
    x32 = x.float()  # statistics in fp32 even under autocast: long sums lose precision in fp16
    count = mask.sum(-1, keepdim=True).clamp(min=1.0)
    mean = (x32 * mask).sum(-1, keepdim=True) / count
    centered = (x32 - mean) * mask
    var = centered.square().sum(-1, keepdim=True) / count  # biased, as instance_norm
    scale = torch.rsqrt(var + norm.norm.eps)
    shift = -mean * scale
    if norm.norm.affine:
        weight, bias = norm.norm.weight[None, :, None].float(), norm.norm.bias[None, :, None].float()
        scale, shift = scale * weight, shift * weight + bias
    # (1 + gamma) * (x * scale + shift) + beta, folded into one multiply-add over the big tensor
    scale = (1 + gamma) * scale
    shift = (1 + gamma) * shift + beta
    return (torch.addcmul(shift, x32, scale) * mask).to(x.dtype)


def _adain_res_blk(block: nn.Module, x: Tensor, s: Tensor, mask_in: Mask, mask_out: Mask) -> Tensor:
    """istftnet.AdainResBlk1d, padding-aware. mask_out differs from mask_in when it upsamples."""
    residual = block.actv(_adain(block.norm1, x, s, mask_in))
    if block.upsample_type != "none":
        # the depthwise transposed conv leaks bias and edge taps past the valid length
        residual = _masked(block.pool(residual), mask_out)
    residual = block.conv1(residual)
    residual = block.conv2(block.actv(_adain(block.norm2, residual, s, mask_out)))
    shortcut = block.upsample(x)
    if block.learned_sc:
        shortcut = block.conv1x1(shortcut)
    return (residual + shortcut) * _SQRT_HALF


def _snake(x: Tensor, alpha: Tensor) -> Tensor:
    return x + (1 / alpha) * torch.sin(alpha * x) ** 2  # snake(0) = 0 keeps padding at zero


def _adain_resblock1(block: nn.Module, x: Tensor, s: Tensor, mask: Mask) -> Tensor:
    """istftnet.AdaINResBlock1 (the generator's resblocks), padding-aware."""
    for c1, c2, n1, n2, a1, a2 in zip(block.convs1, block.convs2, block.adain1, block.adain2,
                                      block.alpha1, block.alpha2, strict=True):
        xt = c1(_snake(_adain(n1, x, s, mask), a1))
        xt = c2(_snake(_adain(n2, xt, s, mask), a2))
        x = xt + x
    return x


def _packed_lstm(lstm: nn.LSTM, x: Tensor, lengths: Tensor) -> Tensor:
    """Run a batch-first LSTM over each item's valid steps only; zeros beyond them."""
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    out, _ = lstm(packed)
    out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    return out


def _conv_out_len(conv: nn.Module, n: int) -> int:
    if isinstance(conv, nn.ConvTranspose1d):
        return ((n - 1) * conv.stride[0] - 2 * conv.padding[0] + conv.dilation[0] * (conv.kernel_size[0] - 1)
                + conv.output_padding[0] + 1)
    return (n + 2 * conv.padding[0] - conv.dilation[0] * (conv.kernel_size[0] - 1) - 1) // conv.stride[0] + 1


@contextlib.contextmanager
def _no_autocast(device: torch.device) -> Iterator[None]:
    with torch.autocast(device_type=device.type, enabled=False):
        yield


def _sine_source(sine_gen: nn.Module, f0: Tensor, generator: torch.Generator) -> Tensor:
    """istftnet.SineGen.forward for one item, drawing from `generator` in KModel's order
    (initial phases, then noise) instead of the global RNG."""
    harmonics = torch.arange(1, sine_gen.harmonic_num + 2, device=f0.device, dtype=f0.dtype)
    fn = f0 * harmonics
    rad = (fn / sine_gen.sampling_rate) % 1
    initial = torch.rand(fn.shape[0], fn.shape[2], generator=generator, device=f0.device, dtype=f0.dtype)
    initial[:, 0] = 0
    rad[:, 0, :] = rad[:, 0, :] + initial
    scale = sine_gen.upsample_scale
    rad = F.interpolate(rad.transpose(1, 2), scale_factor=1 / scale, mode="linear").transpose(1, 2)
    phase = torch.cumsum(rad, dim=1) * 2 * torch.pi
    phase = F.interpolate(phase.transpose(1, 2) * scale, scale_factor=scale, mode="linear").transpose(1, 2)
    sines = torch.sin(phase) * sine_gen.sine_amp
    uv = (f0 > sine_gen.voiced_threshold).to(f0.dtype)
    noise_amp = uv * sine_gen.noise_std + (1 - uv) * sine_gen.sine_amp / 3
    # KModel draws with randn_like(sines), which fills in sines' (transposed) memory order;
    # empty_like + normal_ keeps that layout, so the same seed gives the same noise.
    noise = noise_amp * torch.empty_like(sines).normal_(generator=generator)
    return sines * uv + noise


def _harmonic_spectra(gen: nn.Module, f0: Tensor, f0_lengths: Sequence[int], seed: int) -> Tensor:
    """The generator's source spectra [B, n_fft + 2, frames], each item computed alone on its
    exact F0 length (so the STFT's reflection padding is the solo one), zero beyond."""
    spectra = []
    for b, n in enumerate(f0_lengths):
        generator = torch.Generator(device=f0.device).manual_seed(seed)
        f0_b = gen.f0_upsamp(f0[b:b + 1, None, :n].float()).transpose(1, 2)
        sines = _sine_source(gen.m_source.l_sin_gen, f0_b, generator)
        source = gen.m_source.l_tanh(gen.m_source.l_linear(sines))
        magnitude, phase = gen.stft.transform(source.transpose(1, 2).squeeze(1))
        spectra.append(torch.cat([magnitude, phase], dim=1)[0])
    width = max(x.shape[-1] for x in spectra)
    out = f0.new_zeros((len(spectra), spectra[0].shape[0], width), dtype=torch.float32)
    for b, spectrum in enumerate(spectra):
        out[b, :, :spectrum.shape[-1]] = spectrum
    return out


def _generator(gen: nn.Module, x: Tensor, s: Tensor, f0: Tensor, x_lengths: Tensor,
               seed: int) -> list[Tensor]:
    """istftnet.Generator.forward, padding-aware. x [B, C, 2T] valid for x_lengths (= 2 * frames);
    f0 [B, 2T], zero beyond. Returns each item's waveform [samples] (float32)."""
    device = x.device
    with _no_autocast(device):
        har = _harmonic_spectra(gen, f0, x_lengths.tolist(), seed)
    har = har.to(x.dtype) if x.dtype != torch.float32 else har
    lengths = x_lengths
    for i in range(gen.num_upsamples):
        x = _masked(F.leaky_relu(x, negative_slope=0.1), _mask(lengths, x.shape[-1]))
        lengths = torch.tensor([_conv_out_len(gen.ups[i], int(n)) for n in lengths.tolist()], device=device)
        x = gen.ups[i](x)
        if i == gen.num_upsamples - 1:
            x = gen.reflection_pad(x)
            lengths = lengths + sum(gen.reflection_pad.padding)
        mask = _mask(lengths, x.shape[-1])
        x_source = _adain_resblock1(gen.noise_res[i], gen.noise_convs[i](har), s, mask)
        x = x + x_source
        xs = _adain_resblock1(gen.resblocks[i * gen.num_kernels], x, s, mask)
        for j in range(1, gen.num_kernels):
            xs = xs + _adain_resblock1(gen.resblocks[i * gen.num_kernels + j], x, s, mask)
        x = xs / gen.num_kernels
    x = gen.conv_post(_masked(F.leaky_relu(x), _mask(lengths, x.shape[-1])))
    half = gen.post_n_fft // 2 + 1
    audio = []
    with _no_autocast(device):
        spec, phase = torch.exp(x[:, :half].float()), torch.sin(x[:, half:].float())
        for b, n in enumerate(lengths.tolist()):
            # the inverse STFT's overlap-add at the edge must see only this item's frames
            audio.append(gen.stft.inverse(spec[b:b + 1, :, :n], phase[b:b + 1, :, :n]).reshape(-1))
    return audio


def _decoder(dec: nn.Module, asr: Tensor, f0: Tensor, noise: Tensor, s: Tensor, frames: Tensor,
             seed: int) -> list[Tensor]:
    """istftnet.Decoder.forward, padding-aware. asr [B, 512, T]; f0/noise [B, 2T], zero beyond."""
    mask_1 = _mask(frames, asr.shape[-1])
    mask_2 = _mask(2 * frames, f0.shape[-1])
    f0_down = dec.F0_conv(f0.unsqueeze(1))
    noise_down = dec.N_conv(noise.unsqueeze(1))
    x = _adain_res_blk(dec.encode, torch.cat([asr, f0_down, noise_down], dim=1), s, mask_1, mask_1)
    asr_res = dec.asr_res(asr)
    at_base_rate = True
    for block in dec.decode:
        if at_base_rate:
            x = torch.cat([x, asr_res, f0_down, noise_down], dim=1)
        upsamples = block.upsample_type != "none"
        x = _adain_res_blk(block, x, s, mask_1, mask_2 if upsamples else mask_1)
        if upsamples:
            at_base_rate = False
    return _generator(dec.generator, x, s, f0, 2 * frames, seed)


def _f0_and_noise(predictor: nn.Module, en: Tensor, s: Tensor, frames: Tensor) -> tuple[Tensor, Tensor]:
    """ProsodyPredictor.F0Ntrain, padding-aware: [B, 2T] curves, zero beyond 2 * frames."""
    shared = _packed_lstm(predictor.shared, en.transpose(-1, -2), frames).transpose(-1, -2)
    curves = []
    for blocks, proj in ((predictor.F0, predictor.F0_proj), (predictor.N, predictor.N_proj)):
        x, lengths = shared, frames
        for block in blocks:
            factor = 2 if block.upsample_type != "none" else 1
            width = x.shape[-1]
            x = _adain_res_blk(block, x, s, _mask(lengths, width), _mask(lengths * factor, width * factor))
            lengths = lengths * factor
        curves.append(_masked(proj(x), _mask(lengths, x.shape[-1])).squeeze(1))
    return curves[0], curves[1]


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[None]:
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.inference_mode()
def forward_batch(model: nn.Module, token_ids: Sequence[Sequence[int]], styles: Tensor,
                  speeds: Sequence[float], seed: int = 0,
                  autocast_dtype: torch.dtype | None = None) -> list[Synthesis]:
    """Synthesise B utterances in one forward pass of a `kokoro.KModel` (in eval mode).

    token_ids: per item, vocabulary ids without the boundary zeros (1..510 of them);
    styles: [B, 256] reference style vectors (the voice pack row for each item's length);
    speeds: per item, > 0; seed: the vocoder noise seed (same seed, same output);
    autocast_dtype: torch.float16/bfloat16 to run under autocast (CUDA), None for fp32.
    Returns one `Synthesis` per item, in order.
    """
    if model.training:
        raise ValueError("forward_batch needs the model in eval mode (dropout would apply)")
    batch = len(token_ids)
    if batch == 0:
        return []
    if len(speeds) != batch or styles.shape != (batch, 256):
        raise ValueError(f"{batch} items need {batch} speeds and styles of shape [{batch}, 256]")
    max_tokens = model.context_length - 2
    for ids in token_ids:
        if not 1 <= len(ids) <= max_tokens:
            raise ValueError(f"each item needs 1..{max_tokens} tokens, got {len(ids)}")
    if not all(math.isfinite(v) and v > 0 for v in speeds):
        raise ValueError(f"speeds must be finite and positive, got {list(speeds)}")
    device = model.device
    lengths = torch.tensor([len(ids) + 2 for ids in token_ids], device=device)
    width = int(lengths.max())
    ids = torch.zeros(batch, width, dtype=torch.long)
    for b, item in enumerate(token_ids):
        ids[b, 1:1 + len(item)] = torch.as_tensor(list(item), dtype=torch.long)
    ids = ids.to(device)
    text_mask = torch.arange(width, device=device)[None, :] >= lengths[:, None]  # True on padding
    ref = styles.to(device=device, dtype=torch.float32)
    s_prosody, s_decoder = ref[:, 128:], ref[:, :128]
    speed = torch.tensor(list(speeds), device=device, dtype=torch.float32)

    # Text side, durations and prosody in fp32: they are cheap (token and frame rate) and the
    # F0 curve feeds a phase accumulator, so its rounding would drift the pitch. Autocast, when
    # asked for, covers only the decoder, which is where the time goes.
    bert = model.bert(ids, attention_mask=(~text_mask).int())
    d_en = model.bert_encoder(bert).transpose(-1, -2)
    d = model.predictor.text_encoder(d_en, s_prosody, lengths, text_mask)  # [B, L, 640]
    x = _packed_lstm(model.predictor.lstm, d, lengths)
    duration = torch.sigmoid(model.predictor.duration_proj(x)).sum(dim=-1) / speed[:, None]
    durations = torch.round(duration).clamp(min=1).long().masked_fill(text_mask, 0)
    frames = durations.sum(dim=1)
    total = int(frames.max())
    index = torch.zeros(batch, total, dtype=torch.long, device=device)
    for b in range(batch):
        per_frame = torch.repeat_interleave(torch.arange(width, device=device), durations[b])
        index[b, :per_frame.shape[0]] = per_frame
    frame_mask = _mask(frames, total)
    # the alignment matmul of KModel, as a gather: frame t takes its token's features
    en = torch.gather(d, 1, index[:, :, None].expand(-1, -1, d.shape[-1])).transpose(1, 2)
    en = _masked(en, frame_mask)
    f0, noise = _f0_and_noise(model.predictor, en, s_prosody, frames)
    t_en = model.text_encoder(ids, lengths, text_mask)  # [B, 512, L]
    asr = _masked(torch.gather(t_en, 2, index[:, None, :].expand(-1, t_en.shape[1], -1)), frame_mask)
    with _autocast(device, autocast_dtype):
        audio = _decoder(model.decoder, asr, f0, noise, s_decoder, frames, seed)

    return [Synthesis(audio=audio[b].float().cpu(), durations=durations[b, :int(lengths[b])].cpu())
            for b in range(batch)]
