"""colorization-ae: greyscale in, colour out, through a small U-Net that predicts Lab chroma."""

import dataclasses

import torch
from torch import nn

import zoo
from zoo.components import DownBlock, UpBlock, class_rebalancing_weights, gaussian_log_likelihood, random_flip
from zoo.components.blocks import ACTIVATIONS, activation, divisible_side
from zoo.components.color import gray_lightness, lab_to_rgb, rgb_to_gray, rgb_to_lab
from zoo.config import ModelConfig
from zoo.model import Autoencoder
from zoo_plugins.pretrained import bundled_entries

PRETRAINED: dict[str, str] = {  # name -> sha256 of model.safetensors
    "colorization-ae-photos": "1cad897612c3582d76c4b1362238912990be36bdff770b95f9c1c53dcb36a54c",
}
AB_SCALE = 100.0  # Lab a/b are predicted in units of 100, i.e. roughly [-1.1, 1.1]
AB_RANGE = 110.0  # the classification objective's bins tile a/b in [-AB_RANGE, AB_RANGE]^2 (sRGB fits inside)
OBJECTIVES = ("regression", "classification")


@dataclasses.dataclass
class ColorizationAEConfig(ModelConfig):
    """``channels`` lists the widths of the U-Net's stride-2 stages; ``image_channels`` is the output's (RGB).

    ``objective`` is how the chroma is learned:

    - ``regression`` (the default): the network outputs a/b directly, trained with a unit-variance
      Gaussian likelihood (L2). Where colour is ambiguous the L2 optimum is the average of the
      possible colours, which is greyish, so the output comes out desaturated.
    - ``classification``: the network outputs a distribution over ``ab_bins`` x ``ab_bins`` square
      bins tiling a/b in [-110, 110]^2, trained with cross-entropy against each true a/b split
      bilinearly over its four nearest bin centres. It is decoded by the *annealed mean*: the mean
      bin centre under the distribution sharpened as ``softmax(logits / temperature)``. A temperature
      of 1 gives the plain mean (as greyish as regression); lower values move towards the most likely
      colour, trading some PSNR for saturation. ``temperature`` only affects decoding, so it can be
      chosen on validation data after training. In training, the cross-entropy is taken on every
      ``loss_stride``-th pixel of each row and column (an offset that moves with the step covers them
      all): the per-pixel softmax over the bins costs more than the rest of the network, and
      neighbouring pixels' colours are nearly the same.

    ``rebalance`` (classification only; 0, the default, is off) weights each pixel's cross-entropy by the
    inverse of its colour bin's frequency in the training images seen so far, mixed with the uniform
    distribution (:func:`zoo.components.class_rebalancing_weights`; 0.5 is Zhang et al.'s setting). Most
    training pixels are dull, so without it the network learns to bet on dull colours; with it the
    rare saturated bins count more, and the output is more colourful, at a cost in PSNR. On the
    ``photos`` validation patches (of the 57-photo set, when each photo gave 4 x 64 of them; 10 epochs, both with
    ``augment_flip``, temperatures 0.2-1): 0.1 gave 80-120% of the truth's colourfulness at
    19.4-20.3 dB, against 56-63% at 21.0-21.5 dB without it; 0.5 (stopped after 4 epochs, no flips)
    overshot to 106-196%. The counts are kept in the ``ab_counts`` buffer, so a resumed run continues
    with them, and they ship with the weights as the training set's colour histogram.

    ``augment_flip`` mirrors each training image left to right with probability 1/2 (validation
    images are left alone). On the ``photos`` validation patches (57-photo set) it did not pay: against the same
    run without it, the output was less colourful and its Lab a no longer tracked the truth's.
    """

    image_channels: int = 3
    image_size: int = 32
    channels: tuple[int, ...] = (32, 64, 128)
    activation: str = "relu"
    objective: str = "regression"
    ab_bins: int = 16
    temperature: float = 0.38
    loss_stride: int = 2
    rebalance: float = 0.0
    augment_flip: bool = False

    def validate(self) -> None:
        self.require(self.image_channels == 3, "image_channels", "must be 3 (the output is RGB)")
        self.require_positive("image_size", "channels")
        self.require(len(self.channels) > 0, "channels", "needs at least one stage")
        self.require_choice("activation", ACTIVATIONS)
        self.require(divisible_side(self.image_size, len(self.channels)), "image_size",
                     f"must be divisible by 2**{len(self.channels)} (one halving per entry of channels)")
        self.require_choice("objective", OBJECTIVES)
        self.require(self.ab_bins >= 2, "ab_bins", "must be at least 2")
        self.require_positive("temperature", "loss_stride")
        self.require_range("rebalance", 0.0, 1.0, high_inclusive=False)
        self.require(self.rebalance == 0.0 or self.objective == "classification", "rebalance",
                     "needs objective='classification' (it weights the colour bins' cross-entropy)")


class ColorizationAE(Autoencoder):
    """Predicts the a/b chroma channels of CIE Lab from the lightness of a greyscale image.

    Why Lab a/b rather than RGB: the grey input already fixes the lightness, so
    the network only has to supply chroma, and its output keeps the input's
    exact luminance and detail instead of re-synthesising them. Predicting
    a = b = 0 reproduces the grey image itself, which makes the grey copy the
    model's starting point rather than something it has to learn to match.
    U-Net skip connections carry edges from the input to the output at every scale.
    """

    architecture = "colorization-ae"
    config_class = ColorizationAEConfig
    tasks = ("colorize",)

    def __init__(self, config: ColorizationAEConfig):
        super().__init__(config)
        chans, act = config.channels, config.activation
        self.down = nn.ModuleList(DownBlock(a, b, act) for a, b in zip((1, *chans), chans))
        up_widths = (*chans[-2::-1], chans[0])
        self.up = nn.ModuleList(UpBlock(a, b, act) for a, b in zip(chans[::-1], up_widths))
        merges = [nn.Sequential(nn.Conv2d(2 * c, c, 3, padding=1), activation(act)) for c in chans[-2::-1]]
        if config.objective == "classification":  # per-pixel logits over the a/b bins
            output = nn.Conv2d(chans[0], config.ab_bins ** 2, 1)
        else:
            output = nn.Conv2d(chans[0], 2, 3, padding=1)
        head = nn.Sequential(nn.Conv2d(chans[0] + 1, chans[0], 3, padding=1), activation(act), output)
        self.merge = nn.ModuleList([*merges, head])
        # the bins' centres in units of AB_SCALE, (bins^2, 2), bin k = (row k // bins: a, column k % bins: b)
        centres = torch.linspace(-AB_RANGE, AB_RANGE, config.ab_bins) / AB_SCALE
        grid = torch.stack(torch.meshgrid(centres, centres, indexing="ij"), dim=-1).reshape(-1, 2)
        self.register_buffer("ab_centres", grid, persistent=False)
        if config.rebalance > 0:  # soft counts of the training pixels' a/b bins, for the loss weights
            # float64: a float32 count stops growing by fractional weights once it passes about 2**24
            self.register_buffer("ab_counts", torch.zeros(config.ab_bins**2, dtype=torch.float64))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (1, self.config.image_size, self.config.image_size)

    @property
    def data_shape(self) -> tuple[int, int, int]:
        return (3, self.config.image_size, self.config.image_size)

    def predict_ab(self, lightness: torch.Tensor) -> torch.Tensor:
        """Lab lightness (N, 1, H, W) in [0, 100] -> a/b chroma (N, 2, H, W) in units of AB_SCALE."""
        out = self._network(lightness)
        if self.config.objective == "classification":
            return self.annealed_mean(out)
        return out

    def annealed_mean(self, logits: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        """Bin logits (N, bins^2, H, W) -> a/b (N, 2, H, W): the mean bin centre under softmax(logits / T)."""
        t = self.config.temperature if temperature is None else temperature
        probs = torch.softmax(logits.float().permute(0, 2, 3, 1) / t, dim=-1)  # bins last: a fast reduction
        return (probs @ self.ab_centres.to(probs)).permute(0, 3, 1, 2)

    def ab_logits(self, lightness: torch.Tensor) -> torch.Tensor:
        """Lab lightness -> the per-pixel logits over the a/b bins (classification objective only)."""
        if self.config.objective != "classification":
            raise ValueError(f"ab_logits() needs objective='classification', not {self.config.objective!r}")
        return self._network(lightness)

    def _soft_bins(self, target_ab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """True a/b (N, 2, H, W) -> the four nearest bins (N, 4, H, W) and their bilinear weights (sum 1)."""
        bins = self.config.ab_bins
        step = 2 * AB_RANGE / (bins - 1)
        pos = ((target_ab * AB_SCALE + AB_RANGE) / step).clamp(0, bins - 1)  # fractional bin coordinates
        low = pos.floor().clamp(max=bins - 2)
        frac = pos - low
        low = low.long()
        a0, b0 = low[:, 0], low[:, 1]
        fa, fb = frac[:, 0], frac[:, 1]
        index = torch.stack([a0 * bins + b0, a0 * bins + b0 + 1, (a0 + 1) * bins + b0, (a0 + 1) * bins + b0 + 1], 1)
        weight = torch.stack([(1 - fa) * (1 - fb), (1 - fa) * fb, fa * (1 - fb), fa * fb], 1)
        return index, weight

    def _pixel_weights(self, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Each pixel's rebalancing weight (N, H, W), its soft bins' weights; in training, count the bins first."""
        if self.training:
            with torch.no_grad():
                self.ab_counts.index_add_(0, index.flatten(), weight.flatten().to(self.ab_counts))
        per_bin = class_rebalancing_weights(self.ab_counts, self.config.rebalance).to(weight)
        return (per_bin[index] * weight).sum(1)

    def _network(self, lightness: torch.Tensor) -> torch.Tensor:
        return self.merge[-1][-1](self._features(lightness))

    def _features(self, lightness: torch.Tensor) -> torch.Tensor:
        """The U-Net up to (not including) its output convolution."""
        h = lightness / 50.0 - 1.0
        skips = [h]
        for block in self.down:
            h = block(h)
            skips.append(h)
        skips.pop()
        last = len(self.merge) - 1
        for i, (up, merge, skip) in enumerate(zip(self.up, self.merge, reversed(skips))):
            h = (merge[:-1] if i == last else merge)(torch.cat([up(h), skip], dim=1))
        return h

    def colorize(self, gray: torch.Tensor) -> torch.Tensor:
        """Greyscale images (N, 1, H, W) in [0, 1] -> RGB images (N, 3, H, W) in [0, 1]."""
        lightness = gray_lightness(gray)
        return lab_to_rgb(torch.cat([lightness, AB_SCALE * self.predict_ab(lightness)], dim=1))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Greyscale images -> colour: for this model reconstructing means colorizing."""
        return self.colorize(x)

    def loss(self, batch: torch.Tensor, step: int | None = None) -> dict[str, torch.Tensor]:
        if self.config.augment_flip and self.training and step is not None:
            batch = random_flip(batch)
        target_ab = rgb_to_lab(batch)[:, 1:] / AB_SCALE
        lightness = gray_lightness(rgb_to_gray(batch))
        if self.config.objective == "classification":
            features = self._features(lightness)
            stride = self.config.loss_stride
            if self.training and stride > 1:  # the loss on every stride-th pixel, offset moving with the step
                dy, dx = divmod((step or 0) % stride**2, stride)
                features, target_ab = features[:, :, dy::stride, dx::stride], target_ab[:, :, dy::stride, dx::stride]
            logits = self.merge[-1][-1](features)
            index, weight = self._soft_bins(target_ab)
            log_probs = torch.log_softmax(logits.float().permute(0, 2, 3, 1), dim=-1)  # (N, H, W, bins^2)
            picked = log_probs.gather(-1, index.permute(0, 2, 3, 1))
            cross_entropy = -(picked * weight.permute(0, 2, 3, 1)).sum(-1)  # per pixel, nats
            terms = {"loss": cross_entropy.mean()}
            if self.config.rebalance > 0:
                terms = {"loss": (self._pixel_weights(index, weight) * cross_entropy).mean(),
                         "cross_entropy": cross_entropy.mean().detach()}
            if not self.training:  # decoding costs as much as the loss: only for validation
                with torch.no_grad():
                    terms["ab_mse"] = (self.annealed_mean(logits) - target_ab).pow(2).mean()
            return terms
        predicted_ab = self.predict_ab(lightness)
        log_likelihood = gaussian_log_likelihood(predicted_ab, target_ab, sigma=1.0)
        return {"loss": -log_likelihood.mean(), "ab_mse": (predicted_ab - target_ab).pow(2).mean().detach()}


@zoo.hookimpl
def register_architectures(register):
    register(ColorizationAE)


@zoo.hookimpl
def register_models(register):
    for entry in bundled_entries(PRETRAINED):
        register(entry)
