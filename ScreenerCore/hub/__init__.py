"""Hugging Face hub downloads: the model cache, fetching with pinned revisions and SHA-256 checks."""

from .cache import (CACHE_DIR_ENV, CacheSummary, CachedRepo, clear_cache, default_cache_dir, resolve_cache_dir,
                    summarize_cache)
from .download import (HubDownloadError, HubSource, IntegrityError, ModelNotCachedError, cached_model_folder,
                       fetch_model, is_model_cached, is_offline)

__all__ = ["CACHE_DIR_ENV", "CacheSummary", "CachedRepo", "HubDownloadError", "HubSource", "IntegrityError",
           "ModelNotCachedError", "cached_model_folder", "clear_cache", "default_cache_dir", "fetch_model",
           "is_model_cached", "is_offline", "resolve_cache_dir", "summarize_cache"]
