"""Settings of the SSIM autoencoder (Bergmann et al. 2018)."""

from __future__ import annotations

from dataclasses import dataclass

from defectlab.config import ConfigError, TrainedConfig
from defectlab.methods.ssim.architecture import check_ssim_autoencoder_settings

SSIM_LOSSES = ("ssim", "l2")


@dataclass(frozen=True)
class SSIMConfig(TrainedConfig):
    """SSIM autoencoder (Bergmann et al. 2018)."""

    image_size: int = 256
    epochs: int = 200
    batch_size: int = 128
    optimizer: str = "adam"
    learning_rate: float = 2e-4
    latent_dim: int = 100
    ssim_window: int = 11
    augment_to: int = 10000
    grayscale: bool = True
    loss: str = "ssim"

    def validate(self) -> None:
        """Raise `ConfigError` naming the first invalid setting."""
        super().validate()
        if self.latent_dim < 1:
            raise ConfigError(f"latent_dim must be at least 1, got {self.latent_dim}")
        if self.ssim_window < 3 or self.ssim_window % 2 == 0:
            raise ConfigError(f"ssim_window must be an odd number >= 3, got {self.ssim_window}")
        if self.ssim_window > self.image_size:
            raise ConfigError(
                f"ssim_window ({self.ssim_window}) must not exceed image_size ({self.image_size})"
            )
        if self.augment_to < 1:
            raise ConfigError(f"augment_to must be at least 1, got {self.augment_to}")
        if self.loss not in SSIM_LOSSES:
            raise ConfigError(f"loss must be one of {', '.join(SSIM_LOSSES)}, got {self.loss!r}")
        check_ssim_autoencoder_settings(self.image_size, self.latent_dim)
