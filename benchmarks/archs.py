"""Published configs of real diffusion architectures (diffusers / transformers config.json of each
model) for bench_generation: built with random weights, since throughput does not depend on them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SD_VAE = {"act_fn": "silu", "block_out_channels": [128, 256, 512, 512], "in_channels": 3, "out_channels": 3,
          "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
          "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "sample_size": 512}
CLIP_L_TEXT = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12,
               "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": "quick_gelu", "projection_dim": 768}
OPENCLIP_H_TEXT = {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
                   "num_hidden_layers": 23, "max_position_embeddings": 77, "vocab_size": 49408,
                   "hidden_act": "gelu", "projection_dim": 512}
OPENCLIP_BIGG_TEXT = {"hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20,
                      "num_hidden_layers": 32, "max_position_embeddings": 77, "vocab_size": 49408,
                      "hidden_act": "gelu", "projection_dim": 1280}
SD15_UNET = {"act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
             "center_input_sample": False, "cross_attention_dim": 768,
             "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                  "DownBlock2D"],
             "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
             "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
             "out_channels": 4, "sample_size": 64,
             "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]}
SD2_UNET = {**SD15_UNET, "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024,
            "use_linear_projection": True}  # SD 2.1-base, the architecture of SD-Turbo
SDXL_UNET = {"act_fn": "silu", "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
             "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20],
             "block_out_channels": [320, 640, 1280], "cross_attention_dim": 2048,
             "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
             "in_channels": 4, "layers_per_block": 2, "out_channels": 4, "norm_num_groups": 32,
             "projection_class_embeddings_input_dim": 2816, "sample_size": 128,
             "transformer_layers_per_block": [1, 2, 10],
             "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
             "use_linear_projection": True}
SD_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                "num_train_timesteps": 1000, "steps_offset": 1}


@dataclass
class Arch:
    name: str
    size: int
    steps: list[int]
    guidance: float
    unet: dict[str, Any]
    text: list[dict[str, Any]]
    vae_scale: float = 0.18215
    turbo: bool = False


ARCHS = {
    "sd15": Arch("sd15", 512, [25, 50], 7.5, SD15_UNET, [CLIP_L_TEXT]),
    "sd-turbo": Arch("sd-turbo", 512, [1, 4], 0.0, SD2_UNET, [OPENCLIP_H_TEXT], turbo=True),
    "sdxl": Arch("sdxl", 1024, [25], 5.0, SDXL_UNET, [CLIP_L_TEXT, OPENCLIP_BIGG_TEXT], vae_scale=0.13025),
}
