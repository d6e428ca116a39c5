"""`wan22bot fetch-models`: the seed workflow's six ComfyUI files, from their public Hub repositories."""

from .catalog import SEED_FILES, SeedFile
from .download import STAGING, FetchResult, fetch_seed_files, partial_path
from .hub import HubError, RemoteFile

__all__ = ["SEED_FILES", "STAGING", "FetchResult", "HubError", "RemoteFile", "SeedFile", "fetch_seed_files", "partial_path"]
