"""``--weights hf-hub:OWNER/NAME[@REVISION]``: published weights fetched through ``huggingface_hub``.

One job: turn a hub id into a local checkpoint file (the hub's own cache, ``HF_HUB_CACHE``) and the
preprocessing its ``config.json`` states (timm's ``pretrained_cfg``). The file then loads through the
same checkpoint loader as a local one. ``huggingface_hub`` is the optional extra ``hub``; it is imported
only when a hub id is given.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import ConvNeXtExportError, InputError
from .preprocess import Preprocessing

HUB_PREFIX = "hf-hub:"
# Preferred first: safetensors holds no code; pytorch_model.bin is read with weights_only=True like any pickle.
WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")
CONFIG_FILE = "config.json"
INSTALL_HINT = "pip install 'convnext-export[hub]'"
_REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")
_FORM = f"{HUB_PREFIX}OWNER/NAME[@REVISION], e.g. {HUB_PREFIX}timm/convnext_tiny.fb_in1k"


@dataclass(frozen=True)
class HubId:
    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"{HUB_PREFIX}{self.repo_id}" + (f"@{self.revision}" if self.revision else "")

    @property
    def model_name(self) -> str:
        """The repository's name: timm names its repositories after the model (``convnext_tiny.fb_in1k``)."""
        return self.repo_id.partition("/")[2]


@dataclass(frozen=True)
class HubWeights:
    """A hub checkpoint in the local cache, with what its config.json says (None where it has none)."""

    hub_id: HubId
    path: Path
    architecture: str | None
    preprocessing: Preprocessing | None


def is_hub_id(weights: object) -> bool:
    return isinstance(weights, str) and weights.startswith(HUB_PREFIX)


def parse_hub_id(text: str) -> HubId:
    """``hf-hub:timm/convnext_tiny.fb_in1k[@rev]`` -> HubId; a malformed id says the form that works."""
    body = text.removeprefix(HUB_PREFIX)
    repo_id, at, revision = body.partition("@")
    if not _REPO_ID.fullmatch(repo_id) or (at and not revision) or "@" in revision:
        raise InputError(f"--weights {text}: not a Hugging Face Hub id; the form is {_FORM} "
                         f"(or pass a local checkpoint file)")
    return HubId(repo_id, revision or None)


def fetch_weights(hub_id: HubId, log: Callable[[str], None] = lambda message: None) -> HubWeights:
    """Download (or find in the cache) the checkpoint and config.json of ``hub_id``."""
    hub = _require_hub(hub_id)
    from huggingface_hub.utils import disable_progress_bars, validate_repo_id

    try:
        validate_repo_id(hub_id.repo_id)
    except hub.errors.HFValidationError as error:
        raise InputError(f"--weights {hub_id}: not a valid Hugging Face Hub repository id ({error}); "
                         f"the form is {_FORM}") from None
    disable_progress_bars()  # the exporter's log says what is fetched; the hub's bars would break --quiet
    path, uncached = None, []
    for filename in WEIGHTS_FILES:
        try:  # once the hub proved unreachable, only the cache is asked (each online try retries for ~30 s)
            path = _download(hub, hub_id, filename, log, local_only=bool(uncached))
        except _NotCached:
            uncached.append(filename)
            continue
        if path is not None:
            break
    if path is None and uncached:
        raise InputError(
            f"--weights {hub_id}: the Hugging Face Hub is unreachable (no network, or HF_HUB_OFFLINE is set) and "
            f"{' / '.join(uncached)} is not in the local cache ({hub.constants.HF_HUB_CACHE}); connect and retry, "
            f"or download the checkpoint elsewhere (hf download {hub_id.repo_id} {uncached[0]}) and pass the "
            f"local file with --weights PATH")
    if path is None:
        raise InputError(f"--weights {hub_id}: the repository has none of {', '.join(WEIGHTS_FILES)}; "
                         f"download its checkpoint and pass the local file with --weights PATH")
    try:
        config_path = _download(hub, hub_id, CONFIG_FILE, log, local_only=bool(uncached))
    except _NotCached:
        config_path = None
    architecture, preprocessing = read_hub_config(config_path) if config_path is not None else (None, None)
    return HubWeights(hub_id, path, architecture, preprocessing)


def read_hub_config(path: Path) -> tuple[str | None, Preprocessing | None]:
    """(architecture, preprocessing) from a timm hub ``config.json``; fields it lacks are None."""
    try:
        config = json.loads(path.read_text())
        pretrained = config.get("pretrained_cfg") or {}
        architecture = config.get("architecture")
        if not {"input_size", "crop_pct", "interpolation", "mean", "std"} <= set(pretrained):
            return architecture, None
        preprocessing = Preprocessing(int(pretrained["input_size"][-1]), float(pretrained["crop_pct"]),
                                      str(pretrained["interpolation"]), tuple(map(float, pretrained["mean"])),
                                      tuple(map(float, pretrained["std"])))
    except (OSError, ValueError, TypeError, AttributeError, IndexError, KeyError) as error:
        raise InputError(f"{path}: the hub's config.json is not a timm pretrained_cfg ({error}); "
                         f"pass the weights file with --weights PATH and the preprocessing options") from None
    return architecture, preprocessing


class _NotCached(Exception):
    """The hub could not be reached and the file is not in the local cache."""


def _require_hub(hub_id: HubId):
    try:
        import huggingface_hub
        import huggingface_hub.errors  # noqa: F401  (hub.errors below)
    except ImportError:
        raise InputError(f"--weights {hub_id} needs huggingface_hub: {INSTALL_HINT}; or download the checkpoint "
                         f"and pass the local file with --weights PATH") from None
    return huggingface_hub


def _download(hub, hub_id: HubId, filename: str, log: Callable[[str], None], local_only: bool = False) -> Path | None:
    """The cached file (downloaded if needed), None when the repository has no such file."""
    errors = hub.errors
    try:
        path = Path(hub.hf_hub_download(hub_id.repo_id, filename, revision=hub_id.revision,
                                        local_files_only=local_only))
    except errors.LocalEntryNotFoundError:  # offline or unreachable, and not cached (before EntryNotFoundError:
        raise _NotCached(filename) from None  # it subclasses it)
    except errors.EntryNotFoundError:  # reached the hub: the repository has no such file
        return None
    except errors.GatedRepoError:
        raise InputError(f"--weights {hub_id}: the repository is gated; accept its terms on huggingface.co and "
                         f"log in (hf auth login), or pass a local file with --weights PATH") from None
    except errors.RepositoryNotFoundError:
        raise InputError(f"--weights {hub_id}: no such repository on the Hugging Face Hub (or it is private: "
                         f"log in with hf auth login); timm's ConvNeXt weights are e.g. "
                         f"{HUB_PREFIX}timm/convnext_tiny.fb_in1k") from None
    except errors.RevisionNotFoundError:
        raise InputError(f"--weights {hub_id}: the repository has no revision {hub_id.revision!r}; "
                         f"drop @{hub_id.revision} for the latest") from None
    except (errors.HfHubHTTPError, OSError) as error:
        raise ConvNeXtExportError(f"--weights {hub_id}: fetching {filename} failed ({error}); retry, or pass a "
                                  f"local file with --weights PATH") from None
    log(f"{hub_id}: {filename} from the Hugging Face cache ({path.stat().st_size / 1e6:.1f} MB)")
    return path
