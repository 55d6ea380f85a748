"""Packaging a bundle for an app: ``edgellm package BUNDLE --target android|ios|linux``.
Light side: needs no torch (a GGUF split needs the gguf package)."""

from edgellm.packaging.build import PackageRequest, PackageResult, package

__all__ = ["PackageRequest", "PackageResult", "package"]
