"""The Hugging Face Hub: ``hf://ORG/NAME[@REVISION]`` loads, pinned pretrained downloads and ``zoo publish``.

huggingface_hub is imported inside functions only, so the zoo core (and the TorchServe
archives that ship it without huggingface_hub) imports without it.
"""

from zoo.hub.download import download_pinned, download_repo, parse_target
from zoo.hub.errors import HubError
from zoo.hub.publish import PublishResult, build_repo_folder, check_publishable, publish

__all__ = ["HubError", "PublishResult", "build_repo_folder", "check_publishable", "download_pinned",
           "download_repo", "parse_target", "publish"]
