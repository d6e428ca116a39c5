"""The seed workflow's six files: where each lives on the Hugging Face Hub and where ComfyUI keeps it.

The repository paths are the ones ComfyUI's own Wan 2.2 14B image-to-video template links to
(Comfy-Org's repackaged repositories). The sizes here are only for messages before the repository
has been asked; every decision (free disk, completeness, sha256) uses the repository's metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

WAN22_REPO = "Comfy-Org/Wan_2.2_ComfyUI_Repackaged"
WAN21_REPO = "Comfy-Org/Wan_2.1_ComfyUI_repackaged"


@dataclass(frozen=True)
class SeedFile:
    repo_id: str
    path_in_repo: str
    subfolder: str  # the ComfyUI models/ folder it belongs in
    approx_bytes: int
    revision: str = "main"

    @property
    def name(self) -> str:
        return PurePosixPath(self.path_in_repo).name

    @property
    def relpath(self) -> str:
        """Where it sits under the destination, exactly as in ComfyUI's models/ folder."""
        return f"{self.subfolder}/{self.name}"


SEED_FILES: tuple[SeedFile, ...] = (
    SeedFile(WAN22_REPO, "split_files/diffusion_models/wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors",
             "diffusion_models", 14_300_000_000),
    SeedFile(WAN22_REPO, "split_files/diffusion_models/wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors",
             "diffusion_models", 14_300_000_000),
    SeedFile(WAN21_REPO, "split_files/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors",
             "text_encoders", 6_735_906_897),
    SeedFile(WAN22_REPO, "split_files/vae/wan_2.1_vae.safetensors",
             "vae", 254_000_000),
    SeedFile(WAN22_REPO, "split_files/loras/wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors",
             "loras", 1_230_000_000),
    SeedFile(WAN22_REPO, "split_files/loras/wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors",
             "loras", 1_230_000_000),
)


def approx_total_gb() -> float:
    return sum(f.approx_bytes for f in SEED_FILES) / 1e9


def help_epilog() -> str:
    """The file table and exit codes for `wan22bot fetch-models --help`."""
    rows = "\n".join(
        f"  {f.relpath:<66} {f.approx_bytes / 1e9:5.2f} GB  {f.repo_id}" for f in SEED_FILES
    )
    return (
        f"files, under DIR (about {approx_total_gb():.0f} GB in all), and the repository each comes from:\n{rows}\n\n"
        "Partial downloads wait in a .wan22bot-fetch/ folder beside each file until complete and checked;\n"
        "then they are renamed into place. Status lines go to stderr; the [model] lines go to stdout.\n\n"
        "examples:\n"
        "  wan22bot fetch-models --dest /srv/models      then set [model] comfyui = \"/srv/models\"\n"
        "  HF_ENDPOINT=https://mirror.example wan22bot fetch-models   through a Hub mirror\n\n"
        "exit codes: 0 done, 2 DIR not usable (or another run is filling it), 4 the Hub unreachable,\n"
        "refusing, missing a file or serving wrong bytes, 7 not enough disk (checked first) or disk full\n"
        "(the partial file is kept: run again to continue), 130 interrupted (run again to continue)."
    )
