"""The figures app stores and phones impose on a packaged model, each with where it comes from.
They change: each says where it is documented (as of the 2024-25 revisions of those pages; the
machines edgellm is built on have no network to re-read them), and a package's note repeats the
figure it applied, so a user can check it against the page of the day."""

from __future__ import annotations

MB, GB = 1000 ** 2, 1000 ** 3

# Google Play, "Play Asset Delivery" (https://developer.android.com/guide/playcore/asset-delivery)
# and "Android App Bundle size limits" (https://developer.android.com/guide/app-bundle#size_restrictions):
# the base module's compressed download is at most 200 MB; each asset pack at most 1.5 GB; all install-time asset packs of an app together at most 4 GB (the same for all
# fast-follow and on-demand packs together).  Limits are on the compressed download; model
# weights barely compress, so edgellm checks their size as they are.
PLAY_BASE_MODULE = 200 * MB
PLAY_ASSET_PACK = int(1.5 * GB)
PLAY_INSTALL_TIME_TOTAL = 4 * GB
PLAY_DEFERRED_TOTAL = 4 * GB

# Apple App Store: an app's uncompressed size is at most 4 GB
# (https://developer.apple.com/help/app-store-connect/reference/maximum-build-file-sizes/); a model above that must be downloaded on first launch (the package's index.json).
APP_STORE_APP = 4 * GB

# iOS terminates a foreground app above a per-device memory limit that Apple does not publish
# ("Reducing your app's memory use", developer.apple.com/documentation/xcode/reducing-your-app-s-
# memory-use: "The memory limit ... depends on the device").  The figures are measured ones,
# by the free fraction of RAM os_proc_available_memory() reported: on an 8 GB iPad about 75% on
# iPadOS 26.0-26.3 and about 37.5% from 26.4 (Apple Developer Forums thread 826325, 2026).  edgellm
# takes the lower, as an app must run on the current system; with the
# com.apple.developer.kernel.increased-memory-limit entitlement the limit is higher (not
# published either).
IOS_DEFAULT_FRACTION = 0.375
IOS_ENTITLEMENT = "com.apple.developer.kernel.increased-memory-limit"
